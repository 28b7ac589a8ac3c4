"""Run independent work items side by side with a progress bar; results are handled (written) in
the calling thread as each one finishes."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def run_parallel(
    work: Callable[..., T],
    items: Iterable[tuple],
    *,
    workers: int,
    desc: str,
    on_result: Callable[[T], None],
    postfix: Callable[[], dict[str, Any]],
) -> None:
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    futures = [pool.submit(work, *item) for item in items]
    try:
        with tqdm(total=len(futures), desc=desc, unit="item", dynamic_ncols=True) as bar:
            for future in as_completed(futures):
                on_result(future.result())
                bar.update(1)
                bar.set_postfix(postfix())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on a failure or Ctrl-C: start nothing new
