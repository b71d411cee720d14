"""HTTP bench for POST /generate, like grps-vllm's original, counting tokens rather than characters.

    .venv/bin/python -m bench.http_bench --url http://127.0.0.1:7080 --concurrency 32 \
        --requests 256 --input-len 128 --max-tokens 128

Streaming (the default) reads `?streaming=true`: the first chunk gives TTFT, the gaps between chunks
give ITL. The stream carries text only, so its tokens are counted one of two ways (--count):
- max-tokens (the default with ignore_eos): each completed stream holds exactly max_tokens tokens;
  one JSON request after the run checks that against the server's own usage count, and the run
  fails if they differ;
- tokenizer: the streamed text encoded again with the model's tokenizer. Random-weight models emit
  byte fragments that re-encode to more tokens than were generated (about +15% with the tiny model).
With --no-stream the server's counts come back as JSON (Accept: application/json), without TTFT.
"""
import argparse
import asyncio
import time

import aiohttp
from tqdm import tqdm

from bench.request_timings import RequestResult, report, save, summarize
from bench.workload import Workload

DEFAULT_TOKENIZER = ".data/tiny-llama"
# A failure after the status line went out ends the stream with this chunk (frontend/grps/generate.py).
STREAM_ERROR = b'\n{"error"'


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:7080", help="the service (nginx), without a path")
    parser.add_argument("--concurrency", "-c", type=int, default=8, help="requests in flight at once")
    parser.add_argument("--requests", "-n", type=int, default=64, help="requests in all")
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument("--input-len", type=int, default=128, help="random prompts of this many tokens")
    prompt.add_argument("--prompt", help="send this fixed prompt instead of random ones")
    parser.add_argument("--max-tokens", type=int, default=128, help="output length asked for")
    parser.add_argument("--no-ignore-eos", dest="ignore_eos", action="store_false",
                        help="let the model stop at its end-of-text token (the output length then varies)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--no-stream", dest="stream", action="store_false", help="ask for one JSON answer")
    parser.add_argument("--count", choices=["max-tokens", "tokenizer"],
                        help="how streamed tokens are counted (default: max-tokens with ignore_eos)")
    parser.add_argument("--tokenizer", default=DEFAULT_TOKENIZER, help="the served model's tokenizer directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--api-key", default="")
    parser.add_argument("--save", help="write the configuration and summary to this JSON file")
    return parser.parse_args(argv)


def request_bodies(args, workload: Workload) -> list[tuple[dict, int]]:
    """Each request's JSON body with its prompt's token count."""
    bodies = []
    for _ in range(args.requests):
        if args.prompt is not None:
            text, length = args.prompt, workload.count_tokens(args.prompt)
        else:
            text, length = workload.text(args.input_len)
        body = {"prompt": text, "max_tokens": args.max_tokens, "ignore_eos": args.ignore_eos,
                "temperature": args.temperature}
        bodies.append((body, length))
    return bodies


async def send_streaming(session, url: str, body: dict, result: RequestResult, workload: Workload) -> None:
    pieces = []
    async with session.post(url + "/generate?streaming=true", json=body) as response:
        if response.status != 200:
            result.error = f"HTTP {response.status}: {(await response.text())[:200]}"
            return
        async for chunk in response.content.iter_any():
            if chunk:
                result.record_chunk(time.perf_counter())
                pieces.append(chunk)
    result.end = time.perf_counter()
    text = b"".join(pieces)
    failure = text.rfind(STREAM_ERROR)
    if failure >= 0 and text.endswith(b"}"):
        result.error = text[failure:].decode(errors="replace").strip()[:200]
    result.output_tokens = workload.count_tokens(text.decode("utf-8", errors="replace"))


async def send_whole(session, url: str, body: dict, result: RequestResult) -> None:
    async with session.post(url + "/generate", json=body, headers={"Accept": "application/json"}) as response:
        if response.status != 200:
            result.error = f"HTTP {response.status}: {(await response.text())[:200]}"
            return
        answer = await response.json()
    result.end = time.perf_counter()
    result.output_tokens = answer["usage"]["completion_tokens"]
    result.prompt_tokens = answer["usage"]["prompt_tokens"]


async def run_one(session, args, body: dict, prompt_tokens: int, workload: Workload) -> RequestResult:
    result = RequestResult(start=time.perf_counter(), prompt_tokens=prompt_tokens)
    try:
        if args.stream:
            await send_streaming(session, args.url, body, result, workload)
        else:
            await send_whole(session, args.url, body, result)
    except (aiohttp.ClientError, asyncio.TimeoutError) as error:
        result.error = f"{type(error).__name__}: {error}"
    return result


async def run_all(args, bodies, workload: Workload) -> tuple[list[RequestResult], float]:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    connector = aiohttp.TCPConnector(limit=args.concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    pending = iter(bodies)
    results: list[RequestResult] = []
    progress = tqdm(total=len(bodies), unit="req")

    async def worker(session):
        for body, prompt_tokens in pending:
            results.append(await run_one(session, args, body, prompt_tokens, workload))
            progress.update()

    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:
        start = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(args.concurrency)))
        duration = time.perf_counter() - start
    progress.close()
    return results, duration


async def usage_count(args, body: dict) -> int:
    """The server's own count of output tokens for one request like the bench's."""
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    async with aiohttp.ClientSession(headers=headers) as session:
        result = RequestResult(start=time.perf_counter())
        await send_whole(session, args.url, body, result)
    if result.error:
        raise SystemExit(f"the usage check failed: {result.error}")
    return result.output_tokens


def count_as_asked(args, results: list[RequestResult], body: dict) -> int:
    """Set each completed stream's count to max_tokens, once the server confirms it; return the
    re-encoded total for comparison."""
    counted = asyncio.run(usage_count(args, body))
    if counted != args.max_tokens:
        raise SystemExit(f"the server generated {counted} tokens for max_tokens={args.max_tokens}: "
                         "use --count tokenizer")
    retokenized = 0
    for result in results:
        if result.ok:
            retokenized += result.output_tokens
            result.output_tokens = args.max_tokens
    return retokenized


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.count = args.count or ("max-tokens" if args.ignore_eos else "tokenizer")
    workload = Workload(args.tokenizer, args.seed)
    bodies = request_bodies(args, workload)
    results, duration = asyncio.run(run_all(args, bodies, workload))
    retokenized = None
    if args.stream and args.count == "max-tokens":
        retokenized = count_as_asked(args, results, bodies[0][0])
    summary = summarize(results, duration)
    mode = "streaming" if args.stream else "JSON"
    print(report(f"POST /generate ({mode}) c={args.concurrency} n={args.requests} "
                 f"in={args.prompt and 'fixed' or args.input_len} out={args.max_tokens}", summary))
    if retokenized is not None:
        print(f"output tokens: max_tokens per stream (the server's usage count agreed); "
              f"the streamed text re-encodes to {retokenized}")
    if args.save:
        save(args.save, vars(args), summary)
    return summary


if __name__ == "__main__":
    main()
