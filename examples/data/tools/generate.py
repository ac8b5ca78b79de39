"""Writes the tool-calling set: train.jsonl (conversations with calls, results and answers), heldout.jsonl
(requests with the call they should get, or none) and tools.json (the six tools, for `ember chat --tools`).

Six tools (weather, currency, timer, translation, stock quote, recipes). Each conversation offers the right tool
and one other, in random order, so the model has to pick by name; about one in six asks something no tool answers
and gets a plain reply; every third call is followed by the tool's result and the reply built from it (the rest end
at the call, to keep the set small enough to train on a CPU in minutes). The held-out requests use other cities, amounts, texts, symbols and
ingredients, and other phrasings, than training. OpenAI format: `tools` per record, the assistant's `tool_calls`
(arguments as a JSON string, as OpenAI sends them), `tool` results.

    python examples/data/tools/generate.py          # rewrites the three files (same seed: same bytes)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent


def schema(name: str, description: str, properties: dict, required: list[str]) -> dict:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": properties, "required": required}}}


S, N, I = {"type": "string"}, {"type": "number"}, {"type": "integer"}
TOOLS = {
    "get_weather": schema("get_weather", "Current weather of a city",
                          {"city": S, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, ["city"]),
    "convert_currency": schema("convert_currency", "Convert an amount between currencies",
                               {"amount": N, "from_currency": S, "to_currency": S},
                               ["amount", "from_currency", "to_currency"]),
    "set_timer": schema("set_timer", "Start a countdown timer", {"minutes": I, "label": S}, ["minutes"]),
    "translate_text": schema("translate_text", "Translate text into another language",
                             {"text": S, "target_language": S}, ["text", "target_language"]),
    "get_stock_price": schema("get_stock_price", "Latest price of a stock", {"symbol": S}, ["symbol"]),
    "search_recipes": schema("search_recipes", "Find recipes that use the given ingredients",
                             {"ingredients": {"type": "array", "items": S}}, ["ingredients"]),
}

# (train values, held-out values) per slot
CITIES = (["Paris", "Tokyo", "Berlin", "Madrid", "Toronto", "Sydney", "Cairo", "Lima", "Oslo", "Seoul", "Chicago",
           "Mumbai"], ["Rome", "Nairobi", "Denver", "Hanoi", "Dublin", "Quito"])
CURRENCIES = (["USD", "EUR", "JPY", "GBP", "CNY"], ["CAD", "CHF", "INR"])
AMOUNTS = ([20, 50, 75, 100, 250, 1200], [35, 80, 640])
MINUTES = ([3, 5, 10, 15, 25, 45], [7, 12, 30])
LABELS = (["check the oven", "call mom", "take a break", "water the plants"], ["stretch", "feed the cat"])
TEXTS = (["good morning", "thank you very much", "where is the station", "I love music", "see you tomorrow"],
         ["happy birthday", "the bill, please"])
LANGUAGES = (["French", "Spanish", "German", "Japanese"], ["Italian", "Korean"])
SYMBOLS = (["AAPL", "MSFT", "TSLA", "AMZN", "NVDA"], ["GOOG", "META"])
INGREDIENTS = (["chicken", "rice", "tomatoes", "garlic", "eggs", "spinach", "beans", "potatoes"],
               ["mushrooms", "lentils", "tofu", "carrots"])

PHRASES = {  # (train phrasings, held-out phrasings)
    "get_weather": (["What's the weather like in {city}?", "Is it raining in {city} right now?",
                     "How warm is it in {city} today?", "Tell me the current weather in {city} in {unit}."],
                    ["Could you check the weather for {city}?", "I'm heading to {city}. What's the weather there?",
                     "Weather report for {city} in {unit}, please."]),
    "convert_currency": (["Convert {amount} {from_currency} to {to_currency}.",
                          "How much is {amount} {from_currency} in {to_currency}?"],
                         ["I have {amount} {from_currency}. What is that in {to_currency}?",
                          "Exchange {amount} {from_currency} into {to_currency} for me."]),
    "set_timer": (["Set a timer for {minutes} minutes.", "Remind me in {minutes} minutes to {label}."],
                  ["Can you time {minutes} minutes for me?", "I need a {minutes}-minute timer to {label}."]),
    "translate_text": (["Translate '{text}' into {target_language}.", "How do you say '{text}' in {target_language}?"],
                       ["What is '{text}' in {target_language}?", "Please render '{text}' in {target_language}."]),
    "get_stock_price": (["What is the stock price of {symbol}?", "How is {symbol} trading today?"],
                        ["Give me the latest quote for {symbol}.", "Check the share price of {symbol}."]),
    "search_recipes": (["Find me a recipe with {a} and {b}.", "What can I cook with {a}, {b} and {c}?"],
                       ["I have {a} and {b} in the fridge. Any recipe ideas?",
                        "Search recipes that use {a}, {b} and {c}."]),
}
CHAT = (  # requests no tool answers: a plain reply
    [("Tell me a joke.", "Why did the scarecrow win an award? Because he was outstanding in his field."),
     ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
     ("Who wrote Hamlet?", "William Shakespeare wrote Hamlet."),
     ("Say hello in one word.", "Hello!"),
     ("How many days are in a week?", "A week has seven days."),
     ("What is the boiling point of water?", "Water boils at 100 degrees Celsius at sea level."),
     ("Thanks for your help!", "You're welcome! Happy to help.")],
    [("Who painted the Mona Lisa?", None), ("Name a planet in our solar system.", None),
     ("How many legs does a spider have?", None), ("Good morning!", None), ("What is the largest ocean?", None),
     ("Give me a synonym for happy.", None)])


def request(tool: str, split: int, rng: random.Random) -> tuple[str, dict]:
    """A user request for `tool` (split 0 = train values and phrasings, 1 = held-out) and the call it should get."""
    pick = lambda values: rng.choice(values[split])  # noqa: E731
    phrase = rng.choice(PHRASES[tool][split])
    if tool == "get_weather":
        slots = {"city": pick(CITIES), "unit": rng.choice(["celsius", "fahrenheit"])}
        args = {"city": slots["city"], **({"unit": slots["unit"]} if "{unit}" in phrase else {})}
    elif tool == "convert_currency":
        a, b = rng.sample(CURRENCIES[split] + CURRENCIES[0][:2] * split, 2)
        slots = {"amount": pick(AMOUNTS), "from_currency": a, "to_currency": b}
        args = dict(slots)
    elif tool == "set_timer":
        slots = {"minutes": pick(MINUTES), "label": pick(LABELS)}
        args = {"minutes": slots["minutes"], **({"label": slots["label"]} if "{label}" in phrase else {})}
    elif tool == "translate_text":
        slots = {"text": pick(TEXTS), "target_language": pick(LANGUAGES)}
        args = dict(slots)
    elif tool == "get_stock_price":
        slots = args = {"symbol": pick(SYMBOLS)}
    else:
        a, b, c = rng.sample(INGREDIENTS[split], 3)
        slots = {"a": a, "b": b, "c": c}
        args = {"ingredients": [a, b] + ([c] if "{c}" in phrase else [])}
    return phrase.format(**slots), args


def result_and_answer(tool: str, args: dict, rng: random.Random) -> tuple[dict, str]:
    """What the tool returns and the assistant's reply built from it."""
    if tool == "get_weather":
        unit = args.get("unit", "celsius")
        temp = rng.randint(-5, 35) if unit == "celsius" else rng.randint(25, 95)
        sky = rng.choice(["sunny", "cloudy", "raining", "windy"])
        return ({"temperature": temp, "unit": unit, "sky": sky},
                f"It is {temp} degrees {unit} and {sky} in {args['city']}.")
    if tool == "convert_currency":
        value = round(args["amount"] * rng.uniform(0.5, 2.0), 2)
        return ({"result": value, "currency": args["to_currency"]},
                f"{args['amount']} {args['from_currency']} is about {value} {args['to_currency']}.")
    if tool == "set_timer":
        return ({"status": "started", "minutes": args["minutes"]},
                f"Your {args['minutes']}-minute timer is running.")
    if tool == "translate_text":
        return ({"translation": f"[{args['target_language']}] {args['text']}"},
                f"In {args['target_language']}: [{args['target_language']}] {args['text']}.")
    if tool == "get_stock_price":
        price = round(rng.uniform(50, 900), 2)
        return {"symbol": args["symbol"], "price": price}, f"{args['symbol']} is trading at {price} USD."
    names = " and ".join(i.title() for i in args["ingredients"][:2])
    return {"recipes": [f"{names} Skillet"]}, f"Try the {names} Skillet."


def offered(tool: str | None, rng: random.Random) -> list[dict]:
    others = [t for t in TOOLS if t != tool]
    names = ([tool] if tool else []) + rng.sample(others, 1 if tool else 2)
    rng.shuffle(names)
    return [TOOLS[n] for n in names]


def train_record(i: int, rng: random.Random) -> dict:
    if i % 6 == 5:
        question, reply = CHAT[0][(i // 6) % len(CHAT[0])]
        return {"tools": offered(None, rng), "messages": [{"role": "user", "content": question},
                                                          {"role": "assistant", "content": reply}]}
    tool = list(TOOLS)[(i - i // 6) % len(TOOLS)]  # the records before that were tool requests, cycled
    question, args = request(tool, 0, rng)
    result, reply = result_and_answer(tool, args, rng)
    call = {"id": f"call_{i}", "type": "function",
            "function": {"name": tool, "arguments": json.dumps(args, ensure_ascii=False)}}
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": None, "tool_calls": [call]}]
    if i % 3 == 0:
        messages += [{"role": "tool", "tool_call_id": f"call_{i}", "content": json.dumps(result, ensure_ascii=False)},
                     {"role": "assistant", "content": reply}]
    return {"tools": offered(tool, rng), "messages": messages}


def heldout_record(i: int, rng: random.Random) -> dict:
    if i % 6 == 5:
        question, _ = CHAT[1][(i // 6) % len(CHAT[1])]
        return {"tools": offered(None, rng), "messages": [{"role": "user", "content": question}], "expected": None}
    tool = list(TOOLS)[(i - i // 6) % len(TOOLS)]  # the records before that were tool requests, cycled
    question, args = request(tool, 1, rng)
    return {"tools": offered(tool, rng), "messages": [{"role": "user", "content": question}],
            "expected": {"name": tool, "arguments": args}}


def main() -> None:
    rng = random.Random(13)
    train = [train_record(i, rng) for i in range(64)]
    heldout = [heldout_record(i, rng) for i in range(36)]
    lines = lambda records: "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)  # noqa: E731
    (HERE / "train.jsonl").write_text(lines(train), encoding="utf-8")
    (HERE / "heldout.jsonl").write_text(lines(heldout), encoding="utf-8")
    (HERE / "tools.json").write_text(json.dumps(list(TOOLS.values()), indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
