"""Write edgequant/assets/text/reasoning_chat.jsonl: chat records whose assistant turns carry a short
reasoning trace and a final answer, for think-aware calibration and evaluation.

The problems are generated from templates with seeded random numbers (arithmetic word problems, unit
conversions, calendar and comparison questions); the reasoning is written out step by step and the
answers are computed, so every record is correct. Run from the repository root:
    python scripts/make_reasoning_chat.py [--n 120] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "edgequant" / "assets" / "text" / "reasoning_chat.jsonl"
NAMES = ["Anna", "Ben", "Chloe", "David", "Ella", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemi", "Liam"]
ITEMS = [("apples", "apple"), ("books", "book"), ("pencils", "pencil"), ("stamps", "stamp"), ("shells", "shell"), ("marbles", "marble")]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def shopping(r: random.Random):
    name = r.choice(NAMES)
    items, item = r.choice(ITEMS)
    n, price, paid = r.randint(2, 9), r.randint(2, 12), 0
    total = n * price
    paid = total + r.choice([1, 3, 5, 10, 20])
    paid = ((paid + 4) // 5) * 5
    change = paid - total
    q = f"{name} buys {n} {items} at {price} dollars each and pays with {paid} dollars. How much change does {name} get?"
    think = (
        f"Each {item} costs {price} dollars and {name} buys {n} of them, so the total is {n} times {price}, which is {total} dollars. "
        f"{name} pays {paid} dollars. The change is {paid} minus {total}, which is {change} dollars."
    )
    return q, think, f"{name} gets {change} dollars in change."


def sharing(r: random.Random):
    a, b = r.sample(NAMES, 2)
    items, _ = r.choice(ITEMS)
    per, k = r.randint(3, 12), r.randint(2, 6)
    total = per * k + r.randint(0, k - 1)
    each, left = divmod(total, k)
    q = f"{a} has {total} {items} and shares them equally among {k} friends, including {b}. How many does each friend get, and how many are left over?"
    think = f"Dividing {total} by {k}: {k} times {each} is {k * each}, and {total} minus {k * each} leaves {left}. So each friend gets {each} and {left} remain."
    return q, think, f"Each friend gets {each} {items}, with {left} left over."


def speed(r: random.Random):
    name = r.choice(NAMES)
    v, h = r.randint(3, 18) * 5, r.randint(2, 7)
    m = r.choice([0, 30])
    dist = v * h + v * m // 60
    t = f"{h} hours" + (f" and {m} minutes" if m else "")
    q = f"{name} drives at {v} kilometres per hour for {t}. How far does {name} travel?"
    think = f"In {h} hours at {v} km/h the distance is {v * h} km."
    if m:
        think += f" Thirty minutes is half an hour, which adds {v // 2} km. The total is {v * h} plus {v // 2}, so {dist} km."
    return q, think, f"{name} travels {dist} kilometres."


def weekday(r: random.Random):
    start = r.randrange(7)
    n = r.randint(3, 40)
    end = (start + n) % 7
    q = f"Today is {DAYS[start]}. What day of the week will it be in {n} days?"
    think = f"A week has 7 days. {n} divided by 7 leaves a remainder of {n % 7}. Counting {n % 7} days forward from {DAYS[start]} gives {DAYS[end]}."
    return q, think, f"It will be {DAYS[end]}."


def compare(r: random.Random):
    a, b = r.sample(NAMES, 2)
    x, y = r.randint(10, 90), r.randint(10, 90)
    while y == x:
        y = r.randint(10, 90)
    more, less = (a, b) if x > y else (b, a)
    q = f"{a} read {x} pages and {b} read {y} pages. Who read more, and by how many pages?"
    think = f"{a} read {x} and {b} read {y}. The larger number belongs to {more}. The difference is {max(x, y)} minus {min(x, y)}, which is {abs(x - y)}."
    return q, think, f"{more} read {abs(x - y)} more pages than {less}."


def convert(r: random.Random):
    m = r.randint(2, 30) * 50
    q = f"How many metres and centimetres are there in {m} centimetres?"
    think = f"One metre is 100 centimetres. {m} divided by 100 is {m // 100} with {m % 100} left over."
    return q, think, f"{m} centimetres is {m // 100} metres and {m % 100} centimetres."


KINDS = [shopping, sharing, speed, weekday, compare, convert]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=120)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    r = random.Random(args.seed)
    with open(args.out, "w", encoding="utf-8") as f:
        for i in range(args.n):
            q, think, answer = KINDS[i % len(KINDS)](r)
            rec = {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": answer, "reasoning": think}]}
            f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
