"""Records for tests that plant finished runs without training them."""

from kdbench.store.records import MAIN_HEAD, EpochRecord, RunResult, TopK


def finished(**fields) -> RunResult:
    """A result with the fields a test sets, and placeholder numbers for the ones a result needs."""
    numbers = {"epochs": 1, "best_top1": 1.0, "best_top5": 1.0, "best_epoch": 1}
    return RunResult(**{**numbers, "last_top1": 1.0, "last_top5": 1.0, **fields})


def epoch(number: int, top1: float, top5: float = 99.0, **fields) -> EpochRecord:
    """A main-schedule epoch with this test accuracy (of the method's prediction)."""
    return EpochRecord(epoch=number, test={MAIN_HEAD: TopK(top1=top1, top5=top5)}, **fields)
