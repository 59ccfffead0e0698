"""The pairwise judging prompt and its verdict (text only).

The prompt is MT-Bench's pairwise comparison prompt ("pair-v2", Zheng et al., 2023, *Judging
LLM-as-a-Judge with MT-Bench and Chatbot Arena*, NeurIPS Datasets and Benchmarks; FastChat
``fastchat/llm_judge/data/judge_prompts.jsonl``), with the criteria sentence naming the aspect
being judged. The verdict is the last ``[[A]]``, ``[[B]]`` or ``[[C]]`` (tie) in the reply.
"""

from __future__ import annotations

import re

# aspect -> what the judge is told to consider (the paper's two, and MT-Bench's own list)
ASPECTS: dict[str, str] = {
    "detail": "the level of detail, depth and completeness of the responses",
    "truthfulness": "the accuracy and truthfulness of the responses: no invented facts, numbers or claims",
    "helpfulness": "factors such as the helpfulness, relevance, accuracy, depth, creativity, and level of detail of their responses",
}

SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants to the "
    "user question displayed below. You should choose the assistant that follows the user's instructions and answers "
    "the user's question better. Your evaluation should consider {criteria}. Begin your evaluation by comparing the "
    "two responses and provide a short explanation. Avoid any position biases and ensure that the order in which the "
    "responses were presented does not influence your decision. Do not allow the length of the responses to influence "
    "your evaluation. Do not favor certain names of the assistants. Be as objective as possible. After providing your "
    "explanation, output your final verdict by strictly following this format: \"[[A]]\" if assistant A is better, "
    "\"[[B]]\" if assistant B is better, and \"[[C]]\" for a tie."
)

USER = (
    "[User Question]\n{question}\n\n[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's Answer]"
    "\n\n[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]"
)

_VERDICT = re.compile(r"\[\[([ABC])\]\]")


def messages(aspect: str, question: str, answer_a: str, answer_b: str) -> list[dict[str, str]]:
    if aspect not in ASPECTS:
        raise ValueError(f"unknown aspect {aspect!r}: use {', '.join(ASPECTS)}")
    return [{"role": "system", "content": SYSTEM.format(criteria=ASPECTS[aspect])},
            {"role": "user", "content": USER.format(question=question, answer_a=answer_a, answer_b=answer_b)}]


def verdict(reply: str) -> str | None:
    """"A", "B", "C" (tie) or None when the reply names none."""
    found = _VERDICT.findall(reply)
    return found[-1] if found else None


def combine(first: str | None, second: str | None) -> str:
    """The verdict on (A, B) from the judge's two readings: ``first`` with A shown first, ``second``
    with B shown first (its "A" is B). The same answer preferred both times wins; anything else —
    a disagreement, a tie, a reply with no verdict — is a tie."""
    if (first, second) == ("A", "B"):
        return "A"
    if (first, second) == ("B", "A"):
        return "B"
    return "tie"
