"""Hand-written in-context examples for teacher mode: (user turn, assistant turn) per task.

Varied task types (writing, coding, maths, advice, extraction, explanation, planning) in English and
Chinese. ``prompts.choose_examples`` takes, for each input, the first ``TEACHER_SHOTS`` of its
language in this order that are unlike the input, so most inputs of one language share the same
examples (and the same prompt prefix, decoded once in a batch), and an input that resembles an
example gets others. Order matters: the first ones are the default set.
"""

from __future__ import annotations

Example = tuple[str, str]

TEACHER_SHOTS = 2  # examples per prompt

REFINE: tuple[Example, ...] = (
    ("Write a Python function that checks whether a string is a palindrome.",
     "Write a Python function `is_palindrome(text: str) -> bool` that returns True when the text reads the "
     "same forwards and backwards. Ignore case, spaces and punctuation; treat an empty string as a "
     "palindrome. Include type hints, a docstring, three example calls with their expected results, and "
     "a short note on the time and memory it uses."),
    ("How can I save money on groceries?",
     "Give practical advice for a family of four who want to cut their monthly grocery bill by about 20%. "
     "Cover: 1. planning meals and shopping lists; 2. comparing unit prices and store brands; 3. buying in "
     "season and in bulk without waste; 4. storing and using leftovers. For each point give one concrete "
     "example and an estimate of the saving."),
    ("Explain what inflation is.",
     "Explain inflation to a reader with no background in economics: what it measures, how the consumer "
     "price index is calculated, the main causes (demand, costs, money supply), and how it affects "
     "savings, wages and loans. Use one everyday example with numbers and end with two common "
     "misconceptions."),
    ("Summarize the main causes of the First World War.",
     "Summarize the main causes of the First World War in about 300 words, organised under the headings "
     "militarism, alliances, imperialism and nationalism, followed by the assassination of Archduke Franz "
     "Ferdinand as the immediate trigger. For each heading name one concrete event or fact, and keep a "
     "neutral, factual tone."),
    ("Solve 3x + 7 = 22.",
     "Solve the equation 3x + 7 = 22 step by step: state each algebraic operation, show the equation after "
     "it, give the value of x, and check the answer by substituting it back into the original equation."),
    ("Extract the dates from this email.",
     "From the email below, extract every date and time that is mentioned. Return a table with the "
     "columns: date (YYYY-MM-DD), time (24-hour, or blank), and what happens then, in the order they "
     "appear. Resolve relative dates such as \"next Friday\" from the email's sent date, and say which "
     "ones you resolved."),
)

REFINE_ZH: tuple[Example, ...] = (
    ("写一个冒泡排序。",
     "请用 Python 实现冒泡排序函数 bubble_sort(nums)，要求：1. 原地排序并返回列表；2. 加入提前结束的优化"
     "（一轮没有交换即停止）；3. 写出时间复杂度和空间复杂度；4. 给出两个测试用例及预期输出。"),
    ("如何提高睡眠质量？",
     "请为经常熬夜的上班族提供提高睡眠质量的建议，内容包括：1. 作息时间的调整方法；2. 睡前饮食与运动的注意事项；"
     "3. 卧室环境的布置；4. 放松入睡的具体技巧。每条建议说明原因，并给出可以立即执行的做法。"),
    ("介绍一下长城。",
     "请全面介绍中国长城，包括：1. 修建的历史与主要朝代；2. 著名段落（如八达岭、慕田峪）的特点；"
     "3. 在军事与文化上的意义；4. 今天的保护现状与面临的问题。语言通俗，约 500 字。"),
    ("计算一个圆的面积。",
     "已知圆的半径为 5 厘米，请计算它的面积：写出公式，说明每一步的代入与计算过程，结果保留两位小数并注明单位，"
     "最后用周长公式再算出周长作为补充。"),
)

EXPAND: tuple[Example, ...] = (
    ("Write a Python function that checks whether a string is a palindrome.",
     "Write a JavaScript function that counts how many vowels appear in a sentence."),
    ("How can I save money on groceries?",
     "What are some simple ways to reduce my household electricity bill in winter?"),
    ("Explain what inflation is.",
     "Explain how compound interest works, with a simple example."),
    ("Summarize the main causes of the First World War.",
     "Summarize the key events that led to the fall of the Berlin Wall."),
    ("Solve 3x + 7 = 22.",
     "Find the two numbers whose sum is 30 and whose difference is 8."),
    ("Extract the dates from this email.",
     "List every product name and price mentioned in the following receipt."),
)

EXPAND_ZH: tuple[Example, ...] = (
    ("写一个冒泡排序。", "用 Python 写一个函数，判断一个整数是否为质数。"),
    ("如何提高睡眠质量？", "怎样才能在工作中更好地集中注意力？"),
    ("介绍一下长城。", "请介绍一下敦煌莫高窟的历史和艺术价值。"),
    ("计算一个圆的面积。", "一个长方体长 4 米、宽 3 米、高 2 米，求它的体积和表面积。"),
)

PAIRS: tuple[Example, ...] = (
    ("### Instruction\nName three primary colors.\n\n### Response\nRed, yellow and blue.",
     "### Instruction\nName the three states of matter.\n\n### Response\nSolid, liquid and gas."),
    ("### Instruction\nConvert 5 kilometres to miles.\n\n### Response\n5 km is about 3.11 miles (1 km ≈ 0.621 mi).",
     "### Instruction\nConvert 20 degrees Celsius to Fahrenheit.\n\n### Response\n"
     "20 °C is 68 °F (multiply by 9/5, then add 32)."),
    ("### Instruction\nGive a synonym for \"happy\".\n\n### Response\nJoyful.",
     "### Instruction\nGive an antonym for \"generous\".\n\n### Response\nStingy."),
)

PAIRS_ZH: tuple[Example, ...] = (
    ("### Instruction\n中国的首都是哪里？\n\n### Response\n中国的首都是北京。",
     "### Instruction\n水的沸点是多少摄氏度？\n\n### Response\n在标准大气压下，水的沸点是 100 摄氏度。"),
    ("### Instruction\n把“你好”翻译成英文。\n\n### Response\nHello.",
     "### Instruction\n把“谢谢”翻译成日文。\n\n### Response\nありがとう（arigatou）。"),
)

POOL: dict[str, tuple[tuple[Example, ...], tuple[Example, ...]]] = {
    # task: (examples in languages without CJK, examples in Chinese)
    "refine": (REFINE, REFINE_ZH),
    "expand": (EXPAND, EXPAND_ZH),
    "pairs": (PAIRS, PAIRS_ZH),
}
