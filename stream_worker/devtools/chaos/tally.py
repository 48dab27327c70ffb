"""What a chaos scenario counts, and the duplicate bound it is checked against (pure, no I/O).

Everything is counted by key (the applicant id; the worker keeps the input key on the
prediction and on the dead letter), never by offset: a kill leaves offset gaps.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

#: Faust commits every second (README, "Delivery is at least once").
COMMIT_INTERVAL_SECONDS = 1.0
#: Batches in flight a worker may have scored but not committed.
BATCHES_IN_FLIGHT = 2
#: A record whose first output came later than this after it was sent was held up by the fault.
DELAYED_SECONDS = 2.0


#: Log lines of a worker whose handover failed: a drain that gave up on its pending batches
#: (ours, runtime/acks.py), or a commit the broker refused (Faust; a member evicted, or the
#: group rebalancing again while it committed). README: such work is redone as after a kill.
HANDOVER_FAILURES = ("abandoning", "Committing raised exception", "CommitFailedError")


def handover_failures(log_texts: list[str]) -> int:
    """How many handovers failed, by the workers' own log lines (one per line)."""
    return sum(
        1
        for text in log_texts
        for line in text.splitlines()
        if any(marker in line for marker in HANDOVER_FAILURES)
    )


@dataclass(frozen=True)
class DuplicateBound:
    """The most duplicates (extra outputs beyond the first per id) a scenario may show.

    ``crashes`` workers lost without a drain (kill -9, a broker restart cutting deliveries):
    each may redo what it processed since its last commit, about one commit interval of
    traffic at the offered rate, plus the batches in flight. ``produce_retries`` adds the
    records a non-idempotent producer may write twice after a lost acknowledgement (one
    commit interval of traffic per event). A SIGTERM, a rebalance or a model fault: 0.
    """

    crashes: int = 0
    produce_retries: int = 0
    rate: float = 0.0
    batch_max: int = 0
    why: str = "no worker crash, no lost acknowledgement: a drain hands everything over"

    @property
    def limit(self) -> int:
        per_crash = self.rate * COMMIT_INTERVAL_SECONDS + BATCHES_IN_FLIGHT * self.batch_max
        per_retry = self.rate * COMMIT_INTERVAL_SECONDS
        return round(self.crashes * per_crash + self.produce_retries * per_retry)


@dataclass
class Produced:
    """Records the load generator had acknowledged by the broker: id -> send time (monotonic)."""

    valid: dict[str, float] = field(default_factory=dict)
    poison: dict[str, float] = field(default_factory=dict)
    unacknowledged: int = 0  # sends the broker never acknowledged (not counted as produced)


@dataclass
class Observed:
    """What came out: every prediction and dead letter key, and the first arrival per key."""

    predictions: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)
    first_output: dict[str, float] = field(default_factory=dict)  # key -> monotonic arrival
    #: model version -> predictions, and (arrival, version) of each, for version checks
    versions: Counter[str] = field(default_factory=Counter)
    timeline: list[tuple[float, str]] = field(default_factory=list)
    largest_dead_letter: int = 0  # bytes of the largest dead-letter value

    def add(
        self, kind: str, key: str, arrived: float, version: str | None = None, size: int = 0
    ) -> None:
        (self.predictions if kind == "prediction" else self.dead_letters)[key] += 1
        if kind != "prediction":
            self.largest_dead_letter = max(self.largest_dead_letter, size)
        self.first_output.setdefault(key, arrived)
        if version is not None:
            self.versions[version] += 1
            self.timeline.append((arrived, version))


@dataclass
class Figures:
    """A scenario's result: the counts of README's table and the verdict."""

    scenario: str
    produced_valid: int
    produced_poison: int
    unacknowledged: int
    predicted_unique: int
    lost: int
    duplicates: int
    input_duplicates: int
    redone: int
    valid_dead_lettered: int
    poison_dead_lettered: int
    poison_missing: int
    recovery_seconds: float | None
    max_delay_seconds: float
    healthy_after: bool
    duplicate_bound: int
    bound_why: str
    checks: dict[str, bool] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(self.checks.values())

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["passed"] = self.passed
        return out


def count(
    scenario: str,
    produced: Produced,
    observed: Observed,
    *,
    input_keys: Iterable[str] = (),
    faults: Sequence[float] = (),
    healthy_after: bool,
    bound: DuplicateBound,
    extra_checks: Mapping[str, bool] | None = None,
) -> Figures:
    """Compare what was produced with what came out; check README's guarantees.

    ``input_keys`` are the keys read back from the input topic: a key found there more often
    than once was written twice by a produce retry. Its second output is the producer's
    duplicate, not the workers': ``redone`` (checked against the bound) counts only outputs
    beyond the copies in the input; ``duplicates`` counts every output beyond the first.
    """
    valid, poison = set(produced.valid), set(produced.poison)
    predicted = set(observed.predictions)
    dead = set(observed.dead_letters)
    lost = valid - predicted - dead
    outputs = observed.predictions + observed.dead_letters
    duplicates = sum(n - 1 for key, n in outputs.items() if n > 1 and key in valid | poison)
    copies = Counter(input_keys)
    input_duplicates = sum(n - 1 for n in copies.values() if n > 1)
    # outputs beyond the copies the input holds: work the workers did twice
    redone = sum(
        max(n - max(copies.get(key, 1), 1), 0)
        for key, n in outputs.items()
        if key in valid | poison
    )
    valid_dead = valid & dead
    sent = {**produced.valid, **produced.poison}
    recovery, max_delay = recovery_seconds(sent, observed.first_output, faults)
    figures = Figures(
        scenario=scenario,
        produced_valid=len(valid),
        produced_poison=len(poison),
        unacknowledged=produced.unacknowledged,
        predicted_unique=len(predicted & valid),
        lost=len(lost),
        duplicates=duplicates,
        input_duplicates=input_duplicates,
        redone=redone,
        valid_dead_lettered=len(valid_dead),
        poison_dead_lettered=len(poison & dead),
        poison_missing=len(poison - dead),
        recovery_seconds=recovery,
        max_delay_seconds=max_delay,
        healthy_after=healthy_after,
        duplicate_bound=bound.limit,
        bound_why=bound.why,
    )
    figures.checks = {
        "nothing lost": figures.lost == 0,
        "no valid record dead-lettered": figures.valid_dead_lettered == 0,
        "every poison record dead-lettered": figures.poison_missing == 0,
        # the workers' own: outputs beyond the copies in the input (a produce retry's second
        # copy is the producer's, README "A produce retry", reported as input_duplicates)
        "worker duplicates within bound": figures.redone <= figures.duplicate_bound,
        "healthy afterwards": healthy_after,
        **(extra_checks or {}),
    }
    return figures


def recovery_seconds(
    sent: Mapping[str, float],
    first_output: Mapping[str, float],
    faults: Sequence[float],
    delayed: float = DELAYED_SECONDS,
) -> tuple[float | None, float]:
    """(recovery, worst delay). Per fault: seconds from it until the last record it held up
    (sent from ``delayed`` before it until the next fault, out more than ``delayed`` after it
    was sent) got its first output, 0.0 when it held none up; the worst over the faults.
    None without a fault.

    After that moment every record comes out within ``delayed`` of being sent: the output
    lag is back to about 0. Records with no output at all are lost, counted elsewhere.
    """
    delays = {k: first_output[k] - t for k, t in sent.items() if k in first_output}
    worst = max(delays.values(), default=0.0)
    if not faults:
        return None, round(worst, 3)
    moments = sorted(faults)
    recoveries = []
    for start, end in zip(moments, [*moments[1:], float("inf")], strict=True):
        held = [
            first_output[k]
            for k, t in sent.items()
            if k in delays and start - delayed <= t < end and delays[k] > delayed
        ]
        recoveries.append(max(max(held, default=start) - start, 0.0))
    return round(max(recoveries), 2), round(worst, 3)


def first_version_after(timeline: Sequence[tuple[float, str]], moment: float) -> dict[str, float]:
    """Model version -> first arrival at or after ``moment`` (to time a swap or a fallback)."""
    out: dict[str, float] = {}
    for arrived, version in timeline:
        if arrived >= moment:
            out.setdefault(version, arrived)
    return out
