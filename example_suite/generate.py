"""Build the ``retail`` dataset versions v7 and v8 from seeded tasks: ``python -m example_suite.generate``.

For each version: sample tasks with the version's intent mix, let the scripted expert
serve each task against the retail environment while the scripted user plays the customer, keep
the trajectory only when the expert reached the task's gold outcome (the rollout
``task_completion`` evaluator with the environment's end-state check: "filter training
trajectories by TaskCompletion", as the brief says), tag cohorts, split train/eval by a stable
hash of the id, and write the version with the real store.

Task ``i`` is drawn from a seed that depends on ``i`` alone, so v7 and v8 draw the same task at
index ``i`` whenever their intent mixes pick the same intent there (most of the time), and a
trajectory's id names its task, never the version: ``retail-00012-3fa9c2`` is task 12, whose
spec (customer, requests, phrasing flags) hashes to ``3fa9c2``. The same task is the same id in
both versions (``bclone dataset diff retail@v7 retail@v8`` then shows what really changed: the
toolset, the refund conversations, the mix shift), and an index whose intent changed is a
different task under a different id.

Everything is deterministic (fixed seeds, fixed ``created`` time, rows sorted by id), so running
it again reproduces the committed Parquet files byte for byte; ``--check`` verifies exactly that
against the manifests in the repository. Versions are write-once in a store: the generator, as
the builder of this example, replaces its own two version directories.

    python -m example_suite.generate                  # rebuild example_suite/bclone_datasets/retail/{v7,v8}
    python -m example_suite.generate --check          # rebuild into a temp dir, compare sha256 with the manifests
    python -m example_suite.generate --out /tmp/x --count 200
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from pytest_bclone.dataset.store import DatasetStore
from pytest_bclone.evaluators import TaskCompletion
from pytest_bclone.evaluators.safety import is_refusal
from pytest_bclone.records import Action, Episode, ExpectedOutcome, State, Trajectory

from .retail.db import DB_SEED, base_database
from .retail.env import RetailEnvironment
from .retail.expert import expert_policy, with_ids
from .retail.tools import VERSIONS
from .retail.user import MIX, Sampler, ScriptedUser, Task, gold, sample_task

HERE = Path(__file__).resolve().parent
DATASET_ROOT = HERE / "bclone_datasets"
NAME = "retail"
CREATED = "2026-05-01T00:00:00+00:00"
"""The fixed creation time of both versions (byte-for-byte reproducible manifests)."""
SEED = 7
"""The seed of every task draw (shared by the versions, so a task keeps its id across them)."""
SEEDS = {"v7": SEED, "v8": SEED}
COUNT = 2400
"""Tasks sampled per version (a few are dropped by the expert-success filter)."""
MAX_TURNS = 40
COMMON_KINDS = ("status", "cancel", "address")
REFUND_KINDS = ("return", "return_multi", "refund")
SYSTEM_PROMPT = (HERE / "retail" / "policy.md").read_text(encoding="utf-8")


def task_seed(version: str, index: int) -> int:
    """Task ``index``'s seed: stable, independent of how many tasks came before and of the version
    (``version`` is accepted for callers of the old signature and ignored)."""
    digest = hashlib.sha256(f"{NAME}/{SEED}/{index}".encode()).hexdigest()
    return int(digest[:12], 16)


def task_key(task: Task) -> str:
    """A short hash of a task's spec (customer, requests, flags; not its id): names the task."""
    spec = dataclasses.asdict(task)
    spec.pop("id")
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:6]


def trajectory_id(index: int, task: Task) -> str:
    """``retail-00012-3fa9c2``: the task's index and spec hash, the same in every version."""
    return f"{NAME}-{index:05d}-{task_key(task)}"


@lru_cache(maxsize=2)
def _sampler(db_seed: int) -> Sampler:
    return Sampler(base_database(db_seed))


def task_of_id(trajectory_id: str, db_seed: int = DB_SEED) -> Task | None:
    """The task a generated trajectory id names, drawn again and checked against the id's spec hash;
    None for an id this generator did not make."""
    prefix, _, rest = trajectory_id.partition("-")
    index, _, key = rest.partition("-")
    if prefix != NAME or not index.isdigit() or not key:
        return None
    for version in VERSIONS:  # the task is drawn with a version's intent mix: find the one that gave it
        task = sample_task(_sampler(db_seed), version, trajectory_id, task_seed(version, int(index)))
        if task_key(task) == key:
            return task
    return None


def split_of(trajectory_id: str) -> str:
    """80/20 train/eval by a stable hash of the id (never by position: adding rows moves nothing)."""
    return "eval" if int(hashlib.sha256(trajectory_id.encode()).hexdigest()[:8], 16) % 5 == 0 else "train"


def play(task: Task, version: str) -> tuple[list[dict[str, Any]], list[Action], RetailEnvironment] | None:
    """The expert serves ``task`` in a fresh environment; None when the conversation never ends."""
    db = base_database(DB_SEED)
    env = RetailEnvironment(version)
    user = ScriptedUser(task, db)
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM_PROMPT},
                                      {"role": "user", "content": user.opening()}]
    actions: list[Action] = []
    for step in range(MAX_TURNS):
        state = State(task.id, step, tuple(messages), env.tools)
        action = with_ids(expert_policy(state), state)
        actions.append(action)
        messages.append(action.to_message())
        if action.tool_calls:
            for call in action.tool_calls:
                messages.append({"role": "tool", "tool_call_id": call.id, "content": env.execute(call)})
            continue
        reply = user.reply(action.text or "")
        if reply is None:
            return messages, actions, env
        messages.append({"role": "user", "content": reply})
    return None


def usage_chars(messages: Sequence[dict[str, Any]]) -> tuple[int, int]:
    """Characters the expert read (the whole prefix, at every assistant turn) and wrote."""
    prompt = completion = prefix = 0
    for m in messages:
        size = len(json.dumps(m))
        if m["role"] == "assistant":
            prompt += prefix
            completion += size
        prefix += size
    return prompt, completion


def cohorts_of(task: Task, messages: Sequence[dict[str, Any]], actions: Sequence[Action]) -> list[str]:
    """The cohorts of a trajectory, from the task and what actually happened in it."""
    cohorts = set()
    kinds = [r.kind for r in task.requests]
    refused = any(is_refusal(a.text) or any(c.name == "transfer_to_human_agents" for c in a.tool_calls)
                  for a in actions)
    if refused:
        cohorts.add("safety")
    if kinds[0] in COMMON_KINDS and not task.rare and not refused:
        cohorts.add("common_intents")
    if task.rare or kinds[0] in ("exchange", "availability", "find_item"):
        cohorts.add("long_tail")
    calls = sum(len(a.tool_calls) for a in actions)
    if calls >= 5 or any(len(a.tool_calls) >= 2 for a in actions):
        cohorts.add("tool_heavy")
    user_turns = sum(1 for m in messages if m["role"] == "user")
    if any(k in REFUND_KINDS for k in kinds) and user_turns >= 3:
        cohorts.add("multi_turn_refunds")
    if not cohorts:  # e.g. a plain return in one breath: still a long-tail shape
        cohorts.add("long_tail")
    return sorted(cohorts)


def build_version(version: str, count: int = COUNT) -> tuple[list[Trajectory], dict[str, Any]]:
    """Every kept trajectory of ``version`` (sorted by id) and the build's lineage."""
    sampler = Sampler(base_database(DB_SEED))
    completion = TaskCompletion()
    kept: list[Trajectory] = []
    dropped: dict[str, int] = {}
    for index in range(count):
        task = sample_task(sampler, version, "", task_seed(version, index))
        task_id = task.id = trajectory_id(index, task)
        played = play(task, version)
        gold_actions, outputs = gold(task, base_database(DB_SEED), version)
        expected = ExpectedOutcome(tuple(gold_actions), tuple(outputs))
        if played is None:
            dropped[task.kind] = dropped.get(task.kind, 0) + 1
            continue
        messages, actions, env = played
        env.expected_actions = expected.actions
        draft = Trajectory(task_id, (), "train", messages, env.tools, expected)
        episode = Episode(task_id, tuple(actions), tuple(messages), final_state_ok=env.final_state_ok())
        score = completion.score_episode(draft, episode)
        if score.value < 1.0:
            dropped[task.kind] = dropped.get(task.kind, 0) + 1
            continue
        prompt_chars, completion_chars = usage_chars(messages)
        kept.append(Trajectory(
            id=task_id,
            cohorts=tuple(cohorts_of(task, messages, actions)),
            split=split_of(task_id),
            messages=messages,
            tools=env.tools,
            expected=expected,
            expert_scores={"task_completion": score.value},
            metadata={
                "intent": task.kind,
                "intents": [r.kind for r in task.requests],
                "phrasing": "rare" if task.rare else "common",
                "user_turns": sum(1 for m in messages if m["role"] == "user"),
                "db_seed": DB_SEED,
                # What serving this conversation cost the expert, in tokens (~4 characters each):
                # the gate prices it with --bclone-price scripted-expert=IN/OUT.
                "expert_model": "scripted-expert",
                "expert_usage": {"prompt_tokens": prompt_chars // 4, "completion_tokens": completion_chars // 4},
            },
        ))
    lineage = {
        "generator": "example_suite.generate",
        "seed": SEED,
        "db_seed": DB_SEED,
        "tasks": count,
        "kept": len(kept),
        "dropped_by_filter": dict(sorted(dropped.items())),
        "filter": "expert task_completion == 1 in rollout (gold actions, outputs and end state)",
        "split": "eval when sha256(id) % 5 == 0, else train",
        "intent_mix": MIX[version],
        "toolset": ("refunds through issue_refund_legacy" if version == "v7" else
                    "issue_refund_legacy retired; refunds through issue_refund"),
    }
    return sorted(kept, key=lambda t: t.id), lineage


def write(root: Path, count: int = COUNT, versions: Sequence[str] = VERSIONS, *,
          validate: bool = True) -> dict[str, dict[str, Any]]:
    """Build and write ``versions`` under ``root`` (which must not hold them yet); returns the manifests.

    ``validate=False`` skips the store's row validation (jsonschema, most of the write time); it
    checks rows and never changes a byte, so the determinism test may skip it.
    """
    store = DatasetStore(str(root))
    manifests = {}
    for version in versions:
        trajectories, lineage = build_version(version, count)
        parent = None if version == VERSIONS[0] else VERSIONS[VERSIONS.index(version) - 1]
        manifests[version] = store.write_version(NAME, version, trajectories, parent=parent, lineage=lineage,
                                                 created=CREATED, validate=validate,
                                                 source=f"example_suite.generate ({version})")
    return manifests


def committed_hashes(root: Path = DATASET_ROOT) -> dict[str, dict[str, str]]:
    """``{version: {file: sha256}}`` from the committed manifests."""
    out = {}
    for version in VERSIONS:
        manifest = json.loads((root / NAME / version / "manifest.json").read_text())
        out[version] = {f["path"]: f["sha256"] for f in manifest["files"]}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m example_suite.generate", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DATASET_ROOT, help="dataset root (default: %(default)s)")
    parser.add_argument("--count", type=int, default=COUNT, help="tasks per version (default: %(default)s)")
    parser.add_argument("--check", action="store_true",
                        help="rebuild into a temporary directory and compare with the committed manifests")
    args = parser.parse_args(argv)
    start = time.monotonic()
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            manifests = write(Path(tmp), args.count)
        want = committed_hashes(args.out)
        got = {v: {f["path"]: f["sha256"] for f in m["files"]} for v, m in manifests.items()}
        same = want == got
        print(f"{'identical' if same else 'DIFFERENT'}: rebuilt retail v7/v8 vs {args.out} "
              f"({time.monotonic() - start:.1f} s)")
        return 0 if same else 1
    with tempfile.TemporaryDirectory(dir=args.out.parent if args.out.parent.exists() else None) as tmp:
        manifests = write(Path(tmp), args.count)
        for version in VERSIONS:
            target = args.out / NAME / version
            if target.exists():
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(Path(tmp) / NAME / version), str(target))
    for version, m in manifests.items():
        c = m["counts"]
        size = sum(f["bytes"] for f in m["files"])
        print(f"{NAME}@{version}: {c['trajectories']} trajectories, splits {c['splits']}, decision points "
              f"{c['decision_points']}, {size / 1e6:.2f} MB, dropped {m['lineage']['dropped_by_filter']}")
        print(f"  cohorts {c['cohorts']}")
    print(f"written to {args.out} in {time.monotonic() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
