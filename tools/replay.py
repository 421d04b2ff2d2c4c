"""Rebuild a pipeline's outputs from raw/, remove orphaned outputs, compact, and redrive failed events.

    python -m tools.replay rebuild --bucket B --day 2026-11-25
    python -m tools.replay rebuild --bucket B --from 2026-11-01 --to 2026-11-30
    python -m tools.replay rebuild --bucket B --prefix raw/manual/        # raw/ rebuilds everything
    python -m tools.replay orphans --bucket B                             # lists, asks, then deletes
    python -m tools.replay compact --bucket B --marked                    # or --day / --from --to
    python -m tools.replay redrive                                        # the on-failure queue

Against a deployed stack (default name `ecommerce`: functions ecommerce-transformer and
ecommerce-compactor, queue ecommerce-transformer-failures) with the usual AWS credentials; with
--local-endpoint http://127.0.0.1:PORT against the demo's embedded S3, running the handler files in
this process. Every command has --dry-run, is safe to run again, and ends with what it did.
docs/operations.md ("Replay and redrive") says when to use which; the permissions are in
infra/iam/operator-replay-policy.json; names and formats are the transformer's and the compactor's
(issue 9), restated in tools/replay_aws.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus, urlsplit

import boto3
from botocore.config import Config as BotoConfig
from tqdm import tqdm

from local.events import s3_put_event
from tools.replay_aws import (
    PROCESSED_PREFIX,
    QUARANTINE_PREFIX,
    RAW_PREFIX,
    STATE_PREFIX,
    ReplayError,
    S3Obj,
    State,
    aws_errors,
    day_of,
    day_prefix,
    delete_if_unchanged,
    delete_state,
    hashed_suffix,
    is_compacted,
    list_objects,
    lock_state,
    marked_days,
    name_hash,
    object_exists,
    old_stem,
    output_stem,
    raw_retention_days,
    read_manifest,
    read_state,
    release_state,
    state_key,
    write_marker,
)
from tools.replay_invokers import Function, Invoker, LambdaInvoker, LocalInvoker, Outcome, RateLimiter

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient

DEFAULT_STACK = "ecommerce"
DEFAULT_RATE = 10.0  # invocations per second
# The redrive keeps a message it has received out of sight for this long (it resets the visibility of
# the messages it leaves in the queue when it ends), so that one run never sees a message twice.
REDRIVE_VISIBILITY_SECONDS = 900
SHOWN = 20  # failures listed in a summary before "... and N more"


@dataclass
class Runtime:
    """The clients and the clock the commands use; tests hand in moto clients and a fake clock."""

    s3: S3Client
    invoker: Invoker
    region: str
    sqs_factory: Callable[[], SQSClient]
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    ask: Callable[[str], str] = input
    queue_wait_seconds: int = 2  # long polling: an empty answer then means the queue is empty
    poll_seconds: float = 5.0  # between two looks at the states while waiting for the transformer


@dataclass
class Tally:
    """Invocations made and how they ended, counted by status."""

    label: str
    invoked: int = 0
    accepted: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def add(self, what: str, outcome: Outcome) -> None:
        self.invoked += 1
        self.by_status[outcome.status] += 1
        if outcome.accepted:
            self.accepted += 1
        else:
            self.failures.append(f"{what}: {outcome.status} {outcome.detail}".rstrip())

    @property
    def failed(self) -> int:
        return self.invoked - self.accepted

    def report(self) -> str:
        statuses = ", ".join(f"{status} x{count}" for status, count in sorted(self.by_status.items()))
        lines = [
            f"{self.label}: {self.invoked} invoked, {self.accepted} accepted, {self.failed} failed"
            + (f" (by status: {statuses})" if statuses else "")
        ]
        lines += [f"  failed: {line}" for line in self.failures[:SHOWN]]
        if len(self.failures) > SHOWN:
            lines.append(f"  ... and {len(self.failures) - SHOWN} more")
        return "\n".join(lines)


def _bar(total: int, desc: str, unit: str) -> Any:
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=None, leave=False)


# --- rebuild ----------------------------------------------------------------------------------------


def replay_event(bucket: str, obj: S3Obj, region: str) -> dict[str, Any]:
    """The ObjectCreated:Put notification S3 sent for `obj` (key URL-encoded, real size and ETag), plus
    "force": true, so that the transformer processes content its state says is done."""
    sequencer = f"{int(obj.last_modified.timestamp() * 1_000_000):016X}"
    event = s3_put_event(
        bucket,
        key=obj.key,
        size=obj.size,
        etag=obj.etag,
        sequencer=sequencer,
        event_time=obj.last_modified,
        region=region,
    )
    return {**event, "force": True}


def raw_objects(s3: S3Client, bucket: str, prefixes: Sequence[str]) -> tuple[list[S3Obj], list[S3Obj]]:
    """The raw objects under the prefixes: those the transformer takes (.json) and the others."""
    objects = [obj for prefix in prefixes for obj in list_objects(s3, bucket, prefix)]
    return [o for o in objects if o.key.endswith(".json")], [
        o for o in objects if not o.key.endswith(".json")
    ]


def invoke_transformer(
    rt: Runtime, bucket: str, objects: Sequence[S3Obj], limiter: RateLimiter
) -> tuple[Tally, dict[str, datetime]]:
    """One invocation per raw object; the accepted ones with the time each was accepted."""
    tally = Tally(f"transformer ({rt.invoker.name('transformer')})")
    accepted: dict[str, datetime] = {}
    with _bar(len(objects), "invoking the transformer", "file") as bar:
        for obj in objects:
            limiter.wait()
            outcome = rt.invoker.invoke("transformer", replay_event(bucket, obj, rt.region))
            tally.add(obj.key, outcome)
            if outcome.accepted:
                accepted[obj.key] = outcome.at
            bar.update()
    return tally, accepted


def wait_for_states(
    rt: Runtime, bucket: str, started: dict[str, datetime], timeout: float
) -> tuple[dict[str, State], list[str]]:
    """Until every raw key's state shows a commit after its invocation was accepted, or `timeout` seconds.

    The state object is the transformer's record of a finished run (lock null, etag set); its
    LastModified, on S3's clock, is compared with the invocation's acceptance on Lambda's clock, so that
    this machine's clock does not matter. Returns the committed states and the keys still pending.
    """
    pending = dict(started)
    done: dict[str, State] = {}
    deadline = rt.monotonic() + timeout
    with _bar(len(pending), "waiting for the transformer", "file") as bar:
        while True:
            for key, since in list(pending.items()):
                state = read_state(rt.s3, bucket, state_key(key))
                if state is not None and state.committed_since(since):
                    done[key] = state
                    del pending[key]
                    bar.update()
            remaining = deadline - rt.monotonic()
            if not pending or remaining <= 0:
                return done, sorted(pending)
            rt.sleep(min(rt.poll_seconds, remaining))


def processed_days(keys: Iterable[str]) -> set[date]:
    return {d for k in keys if k.startswith(PROCESSED_PREFIX) and (d := day_of(k)) is not None}


def cmd_rebuild(rt: Runtime, args: argparse.Namespace) -> int:
    bucket = args.bucket
    days = _days(args)
    prefixes = [day_prefix(RAW_PREFIX, d) for d in days] if days else [args.prefix]
    where = f"s3://{bucket}/{prefixes[0]}" + (
        f" ... {prefixes[-1]} ({len(prefixes)} days)" if len(prefixes) > 1 else ""
    )
    objects, others = raw_objects(rt.s3, bucket, prefixes)
    print(f"rebuild {where}: {len(objects)} raw objects")
    for obj in others:
        print(f"  not invoked: {obj.key} (not .json: the transformer ignores it)")
    if not objects:
        return 0
    name = rt.invoker.name("transformer")
    if args.dry_run:
        print(f"dry run: would invoke {name} per object, {args.rate:g} per second at most; the first event:")
        print(json.dumps(replay_event(bucket, objects[0], rt.region), indent=2))
        for obj in objects:
            print(f"  would invoke {name} for {obj.key} ({obj.size} bytes, ETag {obj.etag})")
        if not args.no_compact and not (rt.invoker.asynchronous and args.no_wait):
            wait = "wait for the transformer, then " if rt.invoker.asynchronous else ""
            print(f"then: {wait}invoke {rt.invoker.name('compactor')} for the days its outputs are in")
        return 0
    limiter = RateLimiter(args.rate, rt.monotonic, rt.sleep)
    tally, accepted = invoke_transformer(rt, bucket, objects, limiter)
    print(tally.report())
    pending: list[str] = []
    if rt.invoker.asynchronous and args.no_wait:
        print(
            "not waiting for the transformer: when it has finished, compact the days with\n"
            f"  python -m tools.replay compact --bucket {bucket} --marked"
            + (f" --from {min(days)} --to {max(days)}" if days else "")
        )
        return 1 if tally.failed else 0
    # In process the handlers have finished already: one look at the states, no waiting.
    timeout = args.wait_timeout if rt.invoker.asynchronous else 0
    states, pending = wait_for_states(rt, bucket, accepted, timeout)
    if not rt.invoker.asynchronous:
        pending = []  # the handlers returned: a key with no state was skipped (its raw object is gone)
    else:
        print(f"transformer finished {len(states)} of {len(accepted)} accepted invocations")
        if pending:
            print(
                f"  {len(pending)} not finished after {args.wait_timeout:g} s (still retrying; or failed, "
                "see python -m tools.replay redrive --dry-run; or the raw object was deleted); the first:"
            )
            for key in pending[:SHOWN]:
                print(f"    {key}")
    if args.no_compact:
        return 1 if tally.failed or pending else 0
    # The days asked for, and those the rebuilt keys' outputs are in (rows past midnight, undated keys).
    to_compact = set(days) | processed_days(k for s in states.values() for k in s.outputs)
    compacted = compact_days(rt, to_compact, dry_run=False)
    unrelated = sorted(set(marked_days(rt.s3, bucket)) - to_compact)
    if unrelated:
        print(
            f"{len(unrelated)} other days have a dirty-day marker ({unrelated[0]} ...): the compactor's "
            f"schedule takes them, or now: python -m tools.replay compact --bucket {bucket} --marked"
        )
    return 1 if tally.failed or pending or compacted.failed else 0


# --- compact ----------------------------------------------------------------------------------------


def compact_days(rt: Runtime, days: Iterable[date], *, dry_run: bool) -> Tally:
    """Invoke the compactor for each finished day, synchronously, one day at a time."""
    name = rt.invoker.name("compactor")
    tally = Tally(f"compactor ({name})")
    today = rt.now().date()
    for day in sorted(days):
        if day >= today:
            print(f"  {day}: not finished (UTC), left to the compactor's schedule")
            continue
        if dry_run:
            print(f"  would invoke {name} with {json.dumps({'date': day.isoformat()})}")
            continue
        outcome = rt.invoker.invoke("compactor", {"date": day.isoformat()})
        if outcome.status == "FunctionError:DayNotFinishedError":
            outcome = Outcome(accepted=True, status="not finished", detail=outcome.detail, at=outcome.at)
            print(f"  {day}: not finished for the compactor yet (COMPACT_AFTER_HOURS), left to its schedule")
        elif outcome.accepted:
            print(f"  {day}: {_compaction_line(outcome.result)}")
        else:
            print(f"  {day}: FAILED {outcome.status} {outcome.detail}")
        tally.add(day.isoformat(), outcome)
    if tally.invoked:
        print(tally.report())
    return tally


def _compaction_line(result: Any) -> str:
    days = result.get("days") if isinstance(result, dict) else None
    if not days or not isinstance(days[0], dict):
        return f"done ({json.dumps(result)[:200]})"
    day = days[0]
    return (
        f"{day.get('action', '?')}, {day.get('rows', '?')} rows, {day.get('files_merged', 0)} files merged, "
        f"{day.get('deleted', 0)} deleted"
    )


def cmd_compact(rt: Runtime, args: argparse.Namespace) -> int:
    days = set(_days(args))
    if args.marked:
        days |= set(marked_days(rt.s3, args.bucket))
    print(f"compact s3://{args.bucket}: {len(days)} days")
    tally = compact_days(rt, days, dry_run=args.dry_run)
    return 1 if tally.failed else 0


# --- orphans ----------------------------------------------------------------------------------------


@dataclass
class OwnedOrphans:
    """Outputs to remove that belong to one state; removed while this tool holds that state's lock."""

    state: State
    raw_gone: bool  # the raw key no longer exists: the state goes too
    objects: list[S3Obj] = field(default_factory=list)  # outputs present in S3
    days: set[date] = field(default_factory=set)  # processed days to mark before deleting


@dataclass(frozen=True)
class Retention:
    """raw/ objects expire `days` after they were written (a lifecycle rule; None: never). The outputs of a
    raw object that may have expired are history, not orphans: processed/ and quarantine/ are kept."""

    days: int | None
    today: date

    def may_have_expired(self, day: date | None) -> bool:
        """Whether a raw object written on `day` (None: unknown) may be gone by expiry, not by a delete.

        S3 expires an object at the first midnight (UTC) after its creation plus `days`: one written on
        a day from today - days onwards is still there unless someone deleted it.
        """
        return self.days is not None and (day is None or day < self.today - timedelta(days=self.days))


@dataclass
class OrphanPlan:
    owned: list[OwnedOrphans]
    free: list[S3Obj]  # outputs that no state lists or could own
    verify_days: dict[date, int]  # compacted day -> manifest entries that no state claims
    blocked_days: dict[date, list[str]]  # compacted day -> raw keys to rebuild before it can be verified
    kept: list[tuple[str, str]]  # (key, why it is not removed)
    counts: tuple[int, int, int]  # outputs, states and raw objects read
    retention: Retention
    history: Counter[str] = field(default_factory=Counter)  # kept: their raw objects may have expired

    def objects(self) -> int:
        return sum(len(g.objects) for g in self.owned) + len(self.free)

    def states(self) -> int:
        return sum(g.raw_gone for g in self.owned)

    def days(self) -> set[date]:
        days = {d for g in self.owned for d in g.days} | processed_days(o.key for o in self.free)
        return days | set(self.verify_days)

    def empty(self) -> bool:
        return not (self.owned or self.free or self.verify_days)


class Claims:
    """Who accounts for an output key: the states read, and the raw keys this version has not committed."""

    def __init__(self, states: Sequence[State], raw: set[str]) -> None:
        self.listed = {k for s in states for k in s.outputs}
        # key -> raw key, for the states whose raw object exists
        self.live = {k: s.source_key for s in states if s.source_key in raw for k in s.outputs}
        self._by_hash: dict[str, list[State]] = {}
        for s in states:
            self._by_hash.setdefault(name_hash(s.source_key), []).append(s)
        # A raw key with no committed state may still own outputs under the old names (or new ones a
        # failed run left): they are not orphans until it has been rebuilt.
        committed = {s.source_key for s in states if s.etag is not None}
        self._uncommitted: dict[str, list[str]] = {}
        for key in sorted(k for k in raw if k.endswith(".json") and k not in committed):
            self._uncommitted.setdefault(old_stem(key), []).append(key)
            self._uncommitted.setdefault(name_hash(key), []).append(key)

    def uncommitted_owners(self, key: str) -> list[str]:
        """The raw keys not yet committed whose outputs `key` may be (by old name or by hash)."""
        return self._uncommitted.get(output_stem(key), []) + self._uncommitted.get(
            hashed_suffix(key) or "", []
        )

    def owner(self, key: str) -> State | None:
        """The state whose raw key's hash `key` ends with."""
        candidates = self._by_hash.get(hashed_suffix(key) or "", [])
        return candidates[0] if candidates else None


def raw_day(state: State) -> date | None:
    """The day a state's raw object was written: its key's date, else its quarantine file's date (the
    object's LastModified date for a key without one); None when neither tells."""
    if (day := day_of(state.source_key)) is not None:
        return day
    days = [d for k in state.outputs if k.startswith(QUARANTINE_PREFIX) and (d := day_of(k)) is not None]
    return min(days, default=None)


def find_orphans(s3: S3Client, bucket: str, now: datetime, retention_days: int | None) -> OrphanPlan:
    """What the orphan step would remove, and what it keeps and why (docs/operations.md, "orphans").

    A raw object that may have expired by the bucket's lifecycle rule is not a deleted one: its outputs,
    and any output or compacted day older than the raw retention, are history and stay.
    """
    retention = Retention(retention_days, now.date())
    history: Counter[str] = Counter()
    # Outputs are listed BEFORE the states are read: the transformer registers an output in its state
    # before it writes it, so an output listed here that no state read afterwards lists is not being
    # written by anyone.
    outputs = [*list_objects(s3, bucket, PROCESSED_PREFIX), *list_objects(s3, bucket, QUARANTINE_PREFIX)]
    raw = {o.key for o in list_objects(s3, bucket, RAW_PREFIX)}
    states = [
        state
        for obj in list_objects(s3, bucket, STATE_PREFIX)
        if (state := read_state(s3, bucket, obj.key)) is not None
    ]
    claims = Claims(states, raw)
    kept: list[tuple[str, str]] = []
    owned: dict[str, OwnedOrphans] = {}
    present = {o.key: o for o in outputs}
    for s in states:
        if s.source_key in raw:
            continue
        if retention.may_have_expired(raw_day(s)):
            history["states"] += 1
            continue
        if s.locked_at(now):
            kept.append((s.key, f"raw key {s.source_key} is gone, but a running invocation holds its state"))
            continue
        # Its days include those of outputs compacted away: the compactor drops their rows.
        owned[s.key] = OwnedOrphans(
            s, True, [present[k] for k in s.outputs if k in present], processed_days(s.outputs)
        )
    free: list[S3Obj] = []
    for obj in outputs:
        if is_compacted(obj.key) or obj.key in claims.listed:
            continue
        if owners := claims.uncommitted_owners(obj.key):
            kept.append(
                (obj.key, f"{owners[0]} has not been processed by this version yet: rebuild it first")
            )
        elif (owner := claims.owner(obj.key)) is None:
            if retention.may_have_expired(day_of(obj.key)):
                history["outputs"] += 1
            else:
                free.append(obj)
        elif owner.locked_at(now):
            kept.append((obj.key, f"a running invocation holds the state of {owner.source_key}"))
        else:
            group = owned.setdefault(owner.key, OwnedOrphans(owner, raw_gone=owner.source_key not in raw))
            group.objects.append(obj)
            group.days |= processed_days([obj.key])
    verify, blocked = check_compacted_days(s3, bucket, outputs, claims, retention=retention, history=history)
    return OrphanPlan(
        owned=[g for g in owned.values() if g.objects or g.raw_gone],
        free=free,
        verify_days=verify,
        blocked_days=blocked,
        kept=kept,
        counts=(len(outputs), len(states), len(raw)),
        retention=retention,
        history=history,
    )


def check_compacted_days(
    s3: S3Client,
    bucket: str,
    outputs: Sequence[S3Obj],
    claims: Claims,
    *,
    retention: Retention,
    history: Counter[str],
) -> tuple[dict[date, int], dict[date, list[str]]]:
    """Compacted days whose manifests hold entries no state claims: to mark (drop_unclaimed), or blocked.

    With drop_unclaimed the compactor drops every entry that has no source_key (merged before issue 9),
    claimed or not. A day is marked only if each such entry is either unclaimed or claimed with a loose
    copy in the partition (a rebuild wrote it again, and the compactor merges it in place of the entry);
    otherwise the day is blocked, with the raw keys to rebuild first.
    """
    loose = {o.key for o in outputs if not is_compacted(o.key)}
    # The head, compacted-YYYYMMDD.parquet, is the day's commit record: its manifest lists every entry
    # of the day, including those in parts (compacted-YYYYMMDD-pNN.parquet).
    heads = {
        day: obj
        for obj in outputs
        if (day := day_of(obj.key)) is not None and obj.key.endswith(f"/compacted-{day:%Y%m%d}.parquet")
    }
    verify: dict[date, int] = {}
    blocked: dict[date, list[str]] = {}
    for day, head in sorted(heads.items()):
        if retention.may_have_expired(day):
            history["compacted days"] += 1
            continue
        entries = read_manifest(s3, bucket, head)
        unclaimed = [
            e for e in entries if e["key"] not in claims.live and not claims.uncommitted_owners(e["key"])
        ]
        if not unclaimed:
            continue
        at_risk: set[str] = set()
        for entry in entries:
            key = entry["key"]
            if entry.get("source_key"):
                continue
            at_risk.update(claims.uncommitted_owners(key))
            if key in claims.live and key not in loose:
                at_risk.add(claims.live[key])
        if at_risk:
            blocked[day] = sorted(at_risk)
        else:
            verify[day] = len(unclaimed)
    return verify, blocked


def show_orphans(plan: OrphanPlan, bucket: str) -> None:
    outputs, states, raw = plan.counts
    print(f"orphans in s3://{bucket}: read {outputs} outputs, {states} states, {raw} raw objects")
    for group in plan.owned:
        if group.raw_gone:
            print(f"  raw key gone: {group.state.source_key}")
            print(f"    state {group.state.key}")
        else:
            print(f"  outputs its state no longer lists: {group.state.source_key}")
        for obj in group.objects:
            print(f"    {obj.key}")
    if plan.free:
        print(f"  outputs no state lists ({len(plan.free)}):")
        for obj in plan.free:
            print(f"    {obj.key}")
    for day, count in sorted(plan.verify_days.items()):
        print(f"  compacted day {day}: {count} manifest entries no state claims (the compactor drops them)")
    for day, owners in sorted(plan.blocked_days.items()):
        print(
            f"  compacted day {day} NOT marked: it holds rows of raw keys that must be rebuilt first "
            f"({', '.join(owners[:3])}{', ...' if len(owners) > 3 else ''})"
        )
    for key, why in plan.kept:
        print(f"  kept {key}: {why}")
    if plan.history:
        oldest = plan.retention.today - timedelta(days=plan.retention.days or 0)
        what = ", ".join(f"{count} {kind}" for kind, count in sorted(plan.history.items()))
        print(
            f"  kept as history ({what}): raw/ expires after {plan.retention.days} days (lifecycle), so a "
            f"raw object written before {oldest}, or of unknown date, may be gone by expiry, not deleted"
        )
    if plan.empty():
        print("  nothing to remove")


def remove_orphans(rt: Runtime, bucket: str, plan: OrphanPlan) -> Counter[str]:
    """Remove what the plan lists: markers (drop_unclaimed) before deletes, each state's under its lock."""
    done: Counter[str] = Counter()
    reason = "tools.replay orphans"
    for group in plan.owned:
        source = group.state.source_key
        lock = lock_state(rt.s3, bucket, group.state, rt.now())
        if lock is None:
            print(f"  skipped {source}: its state changed or is locked since it was read; run again later")
            done["skipped"] += 1
            continue
        if group.raw_gone and object_exists(rt.s3, bucket, source):
            release_state(rt.s3, bucket, group.state, lock)
            print(f"  skipped {source}: the raw object exists again")
            done["skipped"] += 1
            continue
        for day in sorted(group.days):
            write_marker(rt.s3, bucket, day, f"{reason}: outputs of {source}", source, drop_unclaimed=True)
            done["markers"] += 1
        for obj in group.objects:
            done[delete_if_unchanged(rt.s3, bucket, obj)] += 1
        if group.raw_gone:
            done[
                "states deleted" if delete_state(rt.s3, bucket, group.state, lock) else "states changed"
            ] += 1
        elif not release_state(rt.s3, bucket, group.state, lock):
            print(f"  the lock on {group.state.key} expired before it was released; the transformer broke it")
    for day in sorted(processed_days(o.key for o in plan.free)):
        write_marker(rt.s3, bucket, day, f"{reason}: outputs no state lists", None, drop_unclaimed=True)
        done["markers"] += 1
    for obj in plan.free:
        done[delete_if_unchanged(rt.s3, bucket, obj)] += 1
    for day in sorted(plan.verify_days):
        write_marker(
            rt.s3, bucket, day, f"{reason}: compacted entries no state claims", None, drop_unclaimed=True
        )
        done["markers"] += 1
    return done


def cmd_orphans(rt: Runtime, args: argparse.Namespace) -> int:
    retention = args.raw_retention_days
    if retention is None:
        retention = raw_retention_days(rt.s3, args.bucket)
    plan = find_orphans(rt.s3, args.bucket, rt.now(), retention)
    show_orphans(plan, args.bucket)
    if plan.empty():
        return 1 if plan.blocked_days else 0
    question = (
        f"Delete {plan.objects()} objects and {plan.states()} state objects, after writing dirty-day markers "
        f"for {len(plan.days())} days? [y/N] "
    )
    if args.dry_run:
        print(f"dry run: nothing written or deleted; the question would be: {question.strip()}")
        return 0
    if not args.yes:
        try:
            answer = rt.ask(question)
        except EOFError:
            answer = ""
            print("\nno answer (input closed): pass --yes to delete without asking")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return 1
    done = remove_orphans(rt, args.bucket, plan)
    print(
        f"orphans: {done['deleted']} objects deleted ({done['gone']} already gone, {done['changed']} changed "
        f"since listed, kept), {done['states deleted']} states deleted, {done['markers']} markers written, "
        f"{done['skipped']} raw keys skipped"
    )
    failed = bool(done["changed"] or done["skipped"] or done["states changed"] or plan.blocked_days)
    if not args.no_compact:
        failed |= bool(compact_days(rt, plan.days(), dry_run=False).failed)
    return 1 if failed else 0


# --- redrive ----------------------------------------------------------------------------------------


def parse_record(body: str) -> tuple[dict[str, Any] | None, str]:
    """The invocation record Lambda sends to an on-failure destination, or None and what is wrong."""
    try:
        record = json.loads(body)
    except ValueError as e:
        return None, f"not JSON ({e})"
    if not isinstance(record, dict) or not isinstance(record.get("requestPayload"), dict):
        return None, "not a Lambda invocation record (no requestPayload object)"
    return record, ""


def _record_line(record: dict[str, Any]) -> str:
    """What a record says, for a person: why it failed, after how many attempts, for which keys."""
    context = record.get("requestContext")
    context = context if isinstance(context, dict) else {}
    records = record["requestPayload"].get("Records")
    keys = []
    for item in records if isinstance(records, list) else []:
        try:
            keys.append(unquote_plus(str(item["s3"]["object"]["key"])))
        except (KeyError, TypeError):
            keys.append("?")
    error = record.get("responsePayload")
    message = str(error.get("errorMessage", "")) if isinstance(error, dict) else ""
    return (
        f"{context.get('condition', '?')} after {context.get('approximateInvokeCount', '?')} attempts, "
        f"keys {keys or '?'}" + (f": {message[:200]}" if message else "")
    )


@dataclass
class Redrive:
    """One pass over the on-failure queue: each message's event invoked again, then deleted if accepted."""

    rt: Runtime
    queue_url: str
    dry_run: bool
    limiter: RateLimiter
    tally: Tally = field(init=False)
    counts: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.name = self.rt.invoker.name("transformer")
        self.tally = Tally(f"redrive to {self.name}")
        self.sqs = self.rt.sqs_factory()

    def run(self, limit: int | None) -> None:
        seen: set[str] = set()
        left: list[str] = []  # receipt handles of messages left in the queue: visible again at the end
        try:
            while limit is None or len(seen) < limit:
                with aws_errors(f"receiving from the queue {self.queue_url}"):
                    messages = self.sqs.receive_message(
                        QueueUrl=self.queue_url,
                        MaxNumberOfMessages=10 if limit is None else max(1, min(10, limit - len(seen))),
                        WaitTimeSeconds=self.rt.queue_wait_seconds,
                        VisibilityTimeout=REDRIVE_VISIBILITY_SECONDS,
                    ).get("Messages", [])
                if not messages:
                    break
                for message in messages:
                    # A standard queue may deliver a message twice: the second copy is left alone.
                    duplicate = message["MessageId"] in seen
                    seen.add(message["MessageId"])
                    try:
                        deleted = not duplicate and self.one(message)
                    except BaseException:
                        left.append(message["ReceiptHandle"])
                        raise
                    if not deleted:
                        left.append(message["ReceiptHandle"])
        finally:
            for handle in left:
                with aws_errors(f"making a message visible again in the queue {self.queue_url}"):
                    self.sqs.change_message_visibility(
                        QueueUrl=self.queue_url, ReceiptHandle=handle, VisibilityTimeout=0
                    )
        self.counts.update(seen=len(seen), left=len(left))

    def one(self, message: Any) -> bool:
        """Invoke one message's event again; True when the message was deleted."""
        message_id = message["MessageId"]
        record, problem = parse_record(message.get("Body", ""))
        if record is None:
            print(f"  left {message_id}: {problem}")
            self.counts["malformed"] += 1
            return False
        context = record.get("requestContext")
        arn = str(context.get("functionArn", "")) if isinstance(context, dict) else ""
        origin = arn.split(":")[6] if arn.count(":") >= 6 else self.name
        if origin != self.name:
            print(f"  left {message_id}: a record of function {origin}, not {self.name}")
            self.counts["other function"] += 1
            return False
        if self.dry_run:
            print(f"  would invoke {self.name} again for {message_id}: {_record_line(record)}")
            return False
        self.limiter.wait()
        outcome = self.rt.invoker.invoke("transformer", record["requestPayload"])
        self.tally.add(message_id, outcome)
        if not outcome.accepted:
            return False
        with aws_errors(f"deleting message {message_id} (its event was invoked again) from {self.queue_url}"):
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
        self.counts["deleted"] += 1
        return True


def queue_url_for(rt: Runtime, args: argparse.Namespace) -> str:
    if args.queue_url:
        return str(args.queue_url)
    name = f"{args.stack}-transformer-failures"
    with aws_errors(f"looking up the queue {name} (region {rt.region})"):
        return rt.sqs_factory().get_queue_url(QueueName=name)["QueueUrl"]


def cmd_redrive(rt: Runtime, args: argparse.Namespace) -> int:
    queue_url = queue_url_for(rt, args)
    print(f"redrive {queue_url}" + (" (dry run: nothing invoked or deleted)" if args.dry_run else ""))
    run = Redrive(rt, queue_url, args.dry_run, RateLimiter(args.rate, rt.monotonic, rt.sleep))
    run.run(args.max)
    tally, counts = run.tally, run.counts
    if tally.invoked:
        print(tally.report())
    print(
        f"redrive: {counts['seen']} messages read, {counts['deleted']} deleted after an accepted invocation, "
        f"{counts['left']} left in the queue ({counts['malformed']} malformed, {counts['other function']} "
        f"of another function, {tally.failed} failed invocations)"
    )
    return 1 if tally.failed or counts["malformed"] or counts["other function"] else 0


# --- command line -----------------------------------------------------------------------------------


def parse_day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bad date {text!r}: expected a real day as YYYY-MM-DD, for example 2026-11-25"
        ) from None


def _days(args: argparse.Namespace) -> list[date]:
    if getattr(args, "day", None):
        return [args.day]
    start, end = getattr(args, "start", None), getattr(args, "end", None)
    if start is None and end is None:
        return []
    if start is None or end is None:
        raise ReplayError("--from and --to go together: give both")
    if start > end:
        raise ReplayError(f"--from {start} is after --to {end}")
    return [start + timedelta(days=n) for n in range((end - start).days + 1)]


def _add_days(parser: argparse.ArgumentParser, required: bool) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--day", type=parse_day, help="one day, YYYY-MM-DD (UTC)")
    group.add_argument("--from", dest="start", type=parse_day, help="first day of a range (with --to)")
    parser.add_argument("--to", dest="end", type=parse_day, help="last day of a range, included")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--bucket", help="the pipeline's bucket (required except for redrive)")
    common.add_argument("--dry-run", action="store_true", help="print what would be done; change nothing")
    common.add_argument("--stack", default=DEFAULT_STACK, help=f"the stack's name (default {DEFAULT_STACK})")
    common.add_argument("--transformer-function", help="default: STACK-transformer")
    common.add_argument("--compactor-function", help="default: STACK-compactor")
    common.add_argument("--region", help="AWS region (default: from the AWS configuration)")
    common.add_argument("--profile", help="AWS profile (default: from the AWS configuration)")
    common.add_argument(
        "--local-endpoint",
        metavar="URL",
        help="the demo's embedded S3, http://127.0.0.1:PORT: handlers run in this process, no AWS account",
    )
    parser = argparse.ArgumentParser(prog="python -m tools.replay", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    rebuild = commands.add_parser(
        "rebuild",
        parents=[common],
        help="invoke the transformer for every raw object of a day, range or prefix",
    )
    _add_days(rebuild, required=False)
    rebuild.add_argument("--prefix", help="a prefix of raw/ instead of days (raw/ for all of it)")
    rebuild.add_argument(
        "--rate", type=float, default=DEFAULT_RATE, help="invocations per second (default 10)"
    )
    rebuild.add_argument(
        "--no-wait", action="store_true", help="do not wait for the transformer, do not compact"
    )
    rebuild.add_argument(
        "--wait-timeout", type=float, default=900.0, help="seconds to wait for the transformer (default 900)"
    )
    rebuild.add_argument("--no-compact", action="store_true", help="do not invoke the compactor afterwards")

    orphans = commands.add_parser(
        "orphans", parents=[common], help="remove outputs no raw object accounts for (asks first)"
    )
    orphans.add_argument("--yes", action="store_true", help="delete without asking (for scripts)")
    orphans.add_argument("--no-compact", action="store_true", help="do not invoke the compactor afterwards")
    orphans.add_argument(
        "--raw-retention-days",
        type=int,
        help="days after which raw/ objects expire (default: read from the bucket's lifecycle rules)",
    )

    compact = commands.add_parser("compact", parents=[common], help="invoke the compactor for days")
    _add_days(compact, required=False)
    compact.add_argument("--marked", action="store_true", help="every day that has a dirty-day marker")

    redrive_parser = commands.add_parser(
        "redrive", parents=[common], help="re-invoke the events in the transformer's on-failure queue"
    )
    redrive_parser.add_argument("--queue-url", help="default: the queue named STACK-transformer-failures")
    redrive_parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help="invocations per second")
    redrive_parser.add_argument("--max", type=int, help="at most this many messages")

    args = parser.parse_args(argv)
    if args.command != "redrive" and not args.bucket:
        parser.error(f"{args.command} needs --bucket")
    if getattr(args, "end", None) and not getattr(args, "start", None):
        parser.error("--to needs --from")
    if args.command == "rebuild" and not (args.day or args.start or args.end or args.prefix):
        parser.error("rebuild needs --day, --from/--to or --prefix")
    if args.command == "rebuild" and args.prefix and (args.day or args.start or args.end):
        parser.error("rebuild takes days or --prefix, not both")
    if args.command == "rebuild" and args.prefix and not args.prefix.startswith(RAW_PREFIX):
        parser.error(
            f"--prefix must be under {RAW_PREFIX} (the transformer reads nothing else), got {args.prefix!r}"
        )
    if args.command == "compact" and not (args.day or args.start or args.end or args.marked):
        parser.error("compact needs --day, --from/--to or --marked")
    if getattr(args, "rate", 1) <= 0:
        parser.error(f"--rate must be a positive number of invocations per second, got {args.rate:g}")
    if getattr(args, "raw_retention_days", None) is not None and args.raw_retention_days < 0:
        parser.error(f"--raw-retention-days must be 0 or more, got {args.raw_retention_days}")
    if getattr(args, "max", None) is not None and args.max < 1:
        parser.error(f"--max must be at least 1, got {args.max}")
    return args


def _local_endpoint(url: str) -> str:
    parts = urlsplit(url)
    if (
        parts.scheme not in ("http", "https")
        or parts.hostname not in ("127.0.0.1", "localhost", "::1")
        or not parts.port
    ):
        raise ReplayError(
            f"--local-endpoint must be the demo's embedded S3 here, http://127.0.0.1:PORT, not {url!r}"
        )
    return url.rstrip("/")


def build_runtime(args: argparse.Namespace) -> Runtime:
    names: dict[Function, str] = {
        "transformer": args.transformer_function or f"{args.stack}-transformer",
        "compactor": args.compactor_function or f"{args.stack}-compactor",
    }
    if args.local_endpoint:
        endpoint = _local_endpoint(args.local_endpoint)
        region = args.region or "us-east-1"
        session = boto3.Session(
            aws_access_key_id="local",
            aws_secret_access_key="local",  # noqa: S106 - moto's server accepts any credentials
            region_name=region,
        )
        return Runtime(
            s3=session.client("s3", endpoint_url=endpoint),
            invoker=LocalInvoker(endpoint, args.bucket, names, region=region),
            region=region,
            sqs_factory=lambda: session.client("sqs", endpoint_url=endpoint),
        )
    session = boto3.Session(region_name=args.region, profile_name=args.profile)
    if not session.region_name:
        raise ReplayError("no AWS region configured: pass --region or set AWS_DEFAULT_REGION")
    retries = BotoConfig(retries={"mode": "standard", "max_attempts": 5})
    # A synchronous compactor run may take its whole timeout; boto3's default read timeout is 60 s.
    lambda_config = retries.merge(BotoConfig(read_timeout=910, connect_timeout=10))
    return Runtime(
        s3=session.client("s3", config=retries),
        invoker=LambdaInvoker(session.client("lambda", config=lambda_config), names),
        region=session.region_name,
        sqs_factory=lambda: session.client("sqs", config=retries),
    )


COMMANDS: dict[str, Callable[[Runtime, argparse.Namespace], int]] = {
    "rebuild": cmd_rebuild,
    "orphans": cmd_orphans,
    "compact": cmd_compact,
    "redrive": cmd_redrive,
}


def main(argv: Sequence[str] | None = None, runtime: Runtime | None = None) -> int:
    args = parse_args(argv)
    try:
        rt = runtime or build_runtime(args)
        with rt.invoker:
            return COMMANDS[args.command](rt, args)
    except ReplayError as e:
        print(f"replay: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "\nreplay: interrupted; what was done stands, and running the same command again is safe",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
