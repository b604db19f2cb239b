"""A randomized, model-based checker: from a seed, random interleavings of producers, processors, monitor
invocations (through the real handler and the CLI), faults and operator commands against a real Redis, with
the monitor's promises checked after every step.

    ./scripts/chaos [--minutes M] [--seed S] [--steps N] [--version 8.2] [--world W]

The world is chosen from the seed (or by --world): one Redis node (with AOF, a proxy in front of it and a
read-only replica) or, on Redis 8.2, a cluster of three masters with a replica each; one stream, or two
streams under the same group (`tweets_stream,tweets_stream:1`, each with its own dead-letter stream).

The promises (a valid tweet is an entry with a usable `id` whose `tweet:<id>` key can hold a hash), for each
stream:
- an entry leaves the group's pending list only if its tweet is written, or it is in its stream's
  dead-letter stream exactly once, or it was deleted from the stream (or a processor acknowledged it, or an
  operator replayed or purged its dead letter);
- every pending entry's delivery count (XPENDING's times_delivered) is what the model expects, read after
  every step and compared with an interval [lo, hi]: lo is the count last read plus the deliveries known
  since (a processor's read; the poison step sets a count), hi adds, for every invocation of the step that
  may have spent deliveries (killed, cut, stalled, restarted, reloading, failed over, answering 503 or
  losing its lease; and the next step after a stall, whose held-back commands may land late), the times its
  claim may have been sent (the retry policy's attempts). Any other invocation (it answered 200 or exited
  0, also beside a processor or a skipped monitor, or its every write was refused: out of memory, NOPERM,
  READONLY, a dead-letter key of the wrong type) leaves every entry still pending at exactly lo: a written
  entry leaves, a refused attempt gives its delivery back (give_back.py), an entry not reached stays. Below
  lo is an extra give-back (a delivery taken back that no refusal spent); above hi, a give-back missing or a
  delivery spent by an invocation that did not fail. The model then takes the counts read as its own, and
  keeps per entry the attempts seen refused and the deliveries spent by attempts that died, for the
  violation's message;
- a valid tweet is dead-lettered only when the count its invocation read before claiming it (the count the
  model had before the step, plus what the step's other invocations may have spent) is more than that
  invocation's MAX_DELIVERIES (the handler's 4, a CLI's own 2-6; the smallest of the step's): a dead letter
  one delivery early is a violation. And only after more deliveries not refused than the smallest
  MAX_DELIVERIES any invocation used, counted from its first delivery as an upper bound (processor reads,
  deliveries set, and every invocation since that may have spent one); and never both written and
  dead-lettered;
- no dead letter is duplicated, none names an entry that never existed in its stream, no stray `tweet:` key;
- every invocation answers 200 or 503 (the CLI exits 0 or 1) within its own budget plus 3 timeouts plus 3 s,
  also when two run at once or a processor works beside it;
- the host's function timeout (function-timeout): the host SIGKILLs the handler past the timeout and its
  grace period and starts it again without counting an error (handler/dev/host.py), and the next
  invocation through the same host answers as above;
- wide entries (wide-entries-capped: 100k-500k fields or values of several MB, some over ENTRY_MAX_BYTES,
  some over PAGE_MAX_BYTES alone) claimed by command lines under a 1.5 GB address-space limit: each exits 0
  or 1 without MemoryError, and each wide entry under ENTRY_MAX_BYTES ends written (HLEN, HSTRLEN), each
  over it dead-lettered `too-large` once, whatever its deliveries. The
  checker never reads one whole: it writes and reads them raw, checks dead letters through a script that
  returns their metadata only, and removes them afterwards, so the model never holds them;
- an entry whose id or a value is over proto-max-bulk-len (id-over-bulk-limit, the limit lowered to 1mb
  after it was added, past MAX_DELIVERIES) is dead-lettered once, whole, while the limit is low;
- streams that STREAM_NAME's pattern matches without the group (group-less-streams): a command line with
  the pattern exits 0, serves exactly the real streams, and leaves the others as they were (no group).

A failing run prints its seed and a step list reduced greedily (each candidate re-run up to three times,
since threads and real servers are not deterministic), with how many re-runs reproduced it.
"""

# The package's modules, each with one job: kinds (constants, fault kinds, worlds, the plan), model (what
# the checker knows), content (what it writes), processes (invocations and reloads in threads), run (the
# steps and the checks), node and cluster (the two worlds' Redis), cli (run_steps, reduce and the command
# line; `python -m tests.chaos`).
from tests.chaos.cli import Outcome, main, reduce, run_steps, seeds_for, table
from tests.chaos.cluster import ClusterRun
from tests.chaos.kinds import FAULTS, WORLDS, Step, ViolationError, World, plan, world_for
from tests.chaos.model import Model, Stats
from tests.chaos.node import NodeRun
from tests.chaos.run import Run

__all__ = [
    "FAULTS",
    "WORLDS",
    "ClusterRun",
    "Model",
    "NodeRun",
    "Outcome",
    "Run",
    "Stats",
    "Step",
    "ViolationError",
    "World",
    "main",
    "plan",
    "reduce",
    "run_steps",
    "seeds_for",
    "table",
    "world_for",
]
