"""Several generations as one stream: (choice index, Piece) in the order the pieces arrive.

Used for `n` and for several prompts in one completions request. The first failure ends the whole
stream; closing it (client gone, error) closes every generation, which aborts its engine request.
"""
import asyncio
from collections.abc import AsyncIterator

from frontend.run.generation import Piece

ENDED = object()  # what a drained generation puts in the inbox last


def merged(streams: list[AsyncIterator[Piece]]) -> AsyncIterator[tuple[int, Piece]]:
    if len(streams) == 1:
        return single(streams[0])
    return interleaved(streams)


async def single(stream: AsyncIterator[Piece]) -> AsyncIterator[tuple[int, Piece]]:
    # One generation, the common case, needs no task and no queue between it and the client.
    try:
        async for piece in stream:
            yield 0, piece
    finally:
        await stream.aclose()


async def interleaved(streams: list[AsyncIterator[Piece]]) -> AsyncIterator[tuple[int, Piece]]:
    inbox: asyncio.Queue = asyncio.Queue()
    tasks = [asyncio.create_task(drain(index, stream, inbox)) for index, stream in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            await asyncio.sleep(0)  # a backlog from many choices must not hold the event loop either
            index, item = await inbox.get()
            if item is ENDED:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def drain(index: int, stream: AsyncIterator[Piece], inbox: asyncio.Queue) -> None:
    try:
        async for piece in stream:
            inbox.put_nowait((index, piece))
        inbox.put_nowait((index, ENDED))
    except Exception as error:
        inbox.put_nowait((index, error))
    finally:
        await stream.aclose()

