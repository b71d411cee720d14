"""A burst of long prompts arriving at one frontend: how long the event loop stalls while they are
encoded, and when the last one is ready, encoded on the loop (as before) or through EncodeBatcher.

    .venv/bin/python -m bench.experiments.tokenize_bench --model .gpu/model --prompts 16 --input-len 1024

Prompts are random token ids decoded to text, as `vllm bench serve --dataset-name random` makes
them. A ticker task measures the loop's longest gap: what every stream of that frontend waits.
"""
import argparse
import asyncio
import random
import time

from frontend.text.tokenizer import Tokenizer

TICK_S = 0.001  # a loop with something to do every millisecond, as one streaming tokens has


async def burst(encode, prompts: list[str]) -> tuple[float, float]:
    """(longest event-loop gap, time until the last prompt is encoded), in ms."""
    gaps, done = [0.0], False

    async def ticker():
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(TICK_S)
            now = time.perf_counter()
            gaps.append(now - last - TICK_S)
            last = now

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    started = time.perf_counter()
    await asyncio.gather(*(encode(prompt) for prompt in prompts))
    elapsed = time.perf_counter() - started
    done = True
    await ticking
    return 1000 * max(gaps), 1000 * elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--input-len", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    tokenizer = Tokenizer(args.model)
    vocab = tokenizer.backend.get_vocab_size()
    rng = random.Random(0)

    async def on_the_loop(text):
        return tokenizer.encode(text)

    async def batched(text):
        return (await tokenizer.encode_prompts([text]))[0]

    for name, encode in (("on the event loop", on_the_loop), ("EncodeBatcher", batched)):
        results = []
        for _ in range(args.rounds):
            prompts = [tokenizer.decode([rng.randrange(vocab) for _ in range(args.input_len)]) for _ in range(args.prompts)]
            results.append(await burst(encode, prompts))
        stalls, totals = sorted(r[0] for r in results), sorted(r[1] for r in results)
        print(f"{name:18} longest loop stall p50 {stalls[len(stalls) // 2]:7.2f} ms | "
              f"burst encoded p50 {totals[len(totals) // 2]:7.2f} ms  ({args.prompts} prompts x {args.input_len} tokens, "
              f"{args.rounds} rounds)")


if __name__ == "__main__":
    asyncio.run(main())
