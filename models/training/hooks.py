"""Trainer hooks: a no-op base class and a rich progress bar.

A hook may implement any of ``on_iteration(trainer, it, losses)`` (after each iteration; ``it`` is the
number of completed iterations, 1-based; ``losses`` maps every logged term to a float),
``on_checkpoint(trainer, path)`` (after ``checkpoint.pt`` was written) and ``on_end(trainer, summary)``.
Hooks run on rank 0 only under DDP.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from rich.progress import Progress, TaskID

    from models.training.trainer import Trainer


class TrainerHook:
    """Base class with no-op callbacks; subclass and override what you need."""

    def on_iteration(self, trainer: Trainer, it: int, losses: dict[str, float]) -> None:
        """Called after iteration ``it`` (1-based count of completed iterations)."""

    def on_checkpoint(self, trainer: Trainer, path: Path) -> None:
        """Called after a checkpoint was written to ``path``."""

    def on_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        """Called once when :meth:`Trainer.train` returns (finished or stopped)."""


class RichProgressHook(TrainerHook):
    """A rich progress bar showing the iteration, the total loss and the learning rate."""

    def __init__(self, description: str = "training") -> None:
        self.description = description
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def on_iteration(self, trainer: Trainer, it: int, losses: dict[str, float]) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        if self._progress is None:
            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            )
            self._progress.start()
            self._task = self._progress.add_task(
                self.description, total=trainer.config.iterations, completed=it - 1, info=""
            )
        assert self._task is not None
        info = f"loss {losses.get('total', float('nan')):.4f} lr {trainer.current_lr:.2e}"
        self._progress.update(self._task, completed=it, info=info)

    def on_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
