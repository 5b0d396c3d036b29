"""A deterministic, generated training corpus for the tiny test tokenizer.

Mixes English-like sentences, numbers, punctuation, code snippets, CJK text and emoji so
that the learned byte-level BPE merges cover multi-byte UTF-8 characters too. Only lists
and a seeded ``random.Random`` are used (no sets/dicts iteration), so the output is the
same on every run and every Python version.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

_SUBJECTS = [
    "the model", "a request", "the scheduler", "every token", "the cache", "our server",
    "this batch", "the kernel", "a small dog", "the old man", "my friend", "the engine",
    "a student", "the teacher", "the river", "the city", "an answer", "the user",
]
_VERBS = [
    "reads", "writes", "sends", "waits for", "returns", "allocates", "frees", "finds",
    "likes", "sees", "builds", "runs", "stops", "starts", "counts", "moves", "keeps",
]
_OBJECTS = [
    "the block", "a page", "the prompt", "the answer", "a new story", "the last line",
    "some memory", "the queue", "a green apple", "the weather", "the number", "a question",
    "the output", "the first word", "the window", "the door", "a long road",
]
_TAILS = [
    "today", "again", "very quickly", "in the morning", "before noon", "after the rain",
    "without a sound", "for a while", "on the GPU", "every second", "at night", "at once",
]
_CONNECTIVES = ["and then", "but", "because", "while", "so", "although", "when"]
_PUNCT = [".", ".", ".", "!", "?", ";", "...", ":"]

_CODE = [
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n    print(i * i)\n",
    "if x is None:\n    raise ValueError(\"x must be set\")\n",
    "class Cache:\n    def __init__(self, size: int) -> None:\n        self.size = size\n",
    "import torch\nx = torch.zeros(4, 8)\ny = x @ x.T\n",
    "int main(void) {\n    printf(\"hello, world\\n\");\n    return 0;\n}\n",
    "const total = items.reduce((acc, v) => acc + v, 0);\n",
    "SELECT id, name FROM users WHERE age > 30 ORDER BY name;\n",
    "{\"model\": \"tiny\", \"max_tokens\": 16, \"temperature\": 0.7}\n",
    "while (i < n) { sum += a[i]; i++; }\n",
    "fn main() {\n    let v: Vec<u32> = vec![1, 2, 3];\n}\n",
    "$ inflight generate --model tiny --prompt \"Hello\"\n",
]

_CJK = [
    "你好，世界。", "今天天气很好。", "我们一起去学校吧。", "这是一个测试。", "模型正在生成文本。",
    "中文字符和标点符号。", "谢谢你的帮助！", "请输入一个问题？",
    "こんにちは、世界。", "東京は大きな都市です。", "ありがとうございます。", "テストの文章です。",
    "안녕하세요, 세계.", "오늘은 날씨가 좋습니다.", "감사합니다!",
]
_EMOJI = [
    "😀", "😂", "🙂", "🚀", "🔥", "✨", "👍", "❤️", "🎉", "🤖", "🐍", "🌍", "☕", "✅", "❌",
    "👩‍💻", "👨‍👩‍👧", "🇺🇸", "🇯🇵", "🏳️‍🌈",
]
_OTHER = ["café", "naïve", "über", "Ñandú", "crème brûlée", "Ελληνικά", "Привет, мир", "→ ← ↑ ↓", "€ £ ¥ ©"]


def _sentence(rng: random.Random) -> str:
    clause = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"
    if rng.random() < 0.5:
        clause += f" {rng.choice(_TAILS)}"
    if rng.random() < 0.3:
        clause += f" {rng.choice(_CONNECTIVES)} {rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"
    text = clause[0].upper() + clause[1:] + rng.choice(_PUNCT)
    if rng.random() < 0.15:
        text += " " + rng.choice(_EMOJI)
    return text


def _numbers(rng: random.Random) -> str:
    forms = [
        lambda: str(rng.randint(0, 99999)),
        lambda: f"{rng.uniform(-1000, 1000):.3f}",
        lambda: f"{rng.randint(1, 28)}/{rng.randint(1, 12)}/{rng.randint(1990, 2030)}",
        lambda: f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}",
        lambda: f"${rng.randint(1, 999)}.{rng.randint(0, 99):02d}",
        lambda: f"{rng.randint(1, 100)}%",
        lambda: f"0x{rng.randint(0, 65535):04x}",
    ]
    return " ".join(rng.choice(forms)() for _ in range(rng.randint(2, 6)))


def _code(rng: random.Random) -> str:
    return rng.choice(_CODE)


def _cjk(rng: random.Random) -> str:
    parts = [rng.choice(_CJK) for _ in range(rng.randint(1, 3))]
    if rng.random() < 0.4:
        parts.append(rng.choice(_EMOJI))
    return "".join(parts)


def _emoji(rng: random.Random) -> str:
    return " ".join(rng.choice(_EMOJI) for _ in range(rng.randint(1, 4)))


def _other(rng: random.Random) -> str:
    return f"{rng.choice(_OTHER)} {_sentence(rng)}"


_KINDS: list[tuple[float, Callable[[random.Random], str]]] = [
    (0.55, _sentence), (0.1, _numbers), (0.1, _code), (0.12, _cjk), (0.06, _emoji), (0.07, _other),
]


def corpus(num_lines: int = 6000, seed: int = 1234) -> Iterator[str]:
    """Yield ``num_lines`` lines of mixed text; identical for identical arguments."""
    rng = random.Random(seed)
    weights = [w for w, _ in _KINDS]
    makers = [m for _, m in _KINDS]
    for _ in range(num_lines):
        (maker,) = rng.choices(makers, weights=weights)
        n = rng.randint(1, 3) if maker is _sentence else 1
        yield " ".join(maker(rng) for _ in range(n))
