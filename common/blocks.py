"""The prompt blocks routing reasons about: hashed as vLLM's prefix cache hashes them, each block's
hash covering its parent's hash and its own token ids, so one block stands for the whole prefix up
to it. Python hashes ints and tuples of ints the same in every process, so every frontend and
engine worker agrees."""


def block_hashes(token_ids: list[int], block_size: int, parent: int = 0) -> list[int]:
    """One chained hash per full block of `token_ids` (a partial last block has none), the first
    chained to `parent` (0: the start of a prompt)."""
    hashes = []
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = hash((parent, *token_ids[start:start + block_size]))
        hashes.append(parent)
    return hashes
