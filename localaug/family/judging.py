"""The judging prompts and how their replies are read (text only).

Both prompts are MT-Bench's (Zheng et al., 2023, *Judging LLM-as-a-Judge with MT-Bench and Chatbot
Arena*, NeurIPS Datasets and Benchmarks; FastChat ``fastchat/llm_judge/data/judge_prompts.jsonl``):

- pairwise comparison ("pair-v2"), with the criteria sentence naming the aspect being judged; the
  verdict is the last ``[[A]]``, ``[[B]]`` or ``[[C]]`` (tie) in the reply;
- single-answer grading ("single-v1", word for word): the judge explains, then rates the answer
  1–10 as ``Rating: [[5]]``; the rating is the last ``[[n]]`` in the reply (else the last ``[n]``,
  FastChat's fallback), a number from 1 to 10. FastChat takes the first match; the last is taken
  here, as for the pairwise verdict, because the rating follows the explanation, and a judge that
  repeats the format's example first is not read as rating 5.
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


def outcome(first: str | None, second: str | None) -> str:
    """What the two readings of one pair say, in words: "A" or "B" (the same answer preferred in
    both orders), "tie" (both readings say tie), "inconsistent" (the readings disagree: position
    bias, or one tie and one win) or "no-verdict" (a reply named none). ``combine`` counts all but
    the first two as a tie; a preference file keeps only "A" and "B"."""
    if first is None or second is None:
        return "no-verdict"
    swapped = {"A": "B", "B": "A", "C": "C"}[second]
    if first != swapped:
        return "inconsistent"
    return "tie" if first == "C" else first


# MT-Bench's single-answer grading prompt ("single-v1"), word for word.
SINGLE_SYSTEM = "You are a helpful assistant."
SINGLE_USER = (
    "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided by an AI assistant "
    "to the user question displayed below. Your evaluation should consider factors such as the helpfulness, relevance, "
    "accuracy, depth, creativity, and level of detail of the response. Begin your evaluation by providing a short "
    "explanation. Be as objective as possible. After providing your explanation, you must rate the response on a scale "
    "of 1 to 10 by strictly following this format: \"[[rating]]\", for example: \"Rating: [[5]]\".\n\n[Question]\n"
    "{question}\n\n[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]"
)
LOWEST, HIGHEST = 1.0, 10.0
_RATING = re.compile(r"\[\[(\d+(?:\.\d+)?)\]\]")
_RATING_FALLBACK = re.compile(r"\[(\d+(?:\.\d+)?)\]")


def grade_messages(question: str, answer: str) -> list[dict[str, str]]:
    """The conversation that asks a judge to rate one answer."""
    return [{"role": "system", "content": SINGLE_SYSTEM},
            {"role": "user", "content": SINGLE_USER.format(question=question, answer=answer)}]


def rating(reply: str) -> float | None:
    """The rating a judge's reply gives (1–10), or None when it gives none in range."""
    found = _RATING.findall(reply) or _RATING_FALLBACK.findall(reply)
    if not found:
        return None
    value = float(found[-1])
    return value if LOWEST <= value <= HIGHEST else None
