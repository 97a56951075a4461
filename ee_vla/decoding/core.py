"""The one decode loop behind AR, Jacobi and CEED decoding (greedy, batch-first).

The loop works over a *step*: a callable `step(tokens, start) -> logits` that runs a window of
generated tokens (B, L) placed at generated positions start .. start+L-1 after the prompt, given
that the KV entries of generated positions < start are already cached (it drops any cached entries
at >= start first). `ee_vla.decoding.hf.HFStep` implements it for transformers models.

State per sample: the n-token window `y`, and `F`, the number of leading tokens known to be final
(equal to what AR would produce, or frozen by an early exit). The prefill's logits make y[0] final.
A prefill may also run the guess's first L tokens after the prompt: it is then an iteration over a
window whose token 0 is a guess as well, and makes final y[0] and one more token per leading right
guess.
One iteration feeds inputs y[s:e] (s = number of committed KV entries) and takes the argmax at every
position, giving predictions for y[s+1:e+1]. The prediction at j is exact when all inputs before j
were; an input y_old[j] was right exactly when the new prediction at j equals it. So after an
iteration F = s + 2 + (number of leading right inputs after s), and the KV entries of those right
inputs stay valid: with `keep_final_kv` they are committed and the window slides past them (AR is
this loop with a one-token window); without it the cache is cut back to the prompt (CLLM).

Exits, per sample: exact convergence (F == n), relaxed convergence (no token moved by more than
`tau` bins), an iteration cap, a wall-clock deadline, and per-action deadlines that freeze one
action's tokens as they are (later tokens are then decoded conditioned on the frozen ones).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from ee_vla.decoding.config import DecodeConfig

Step = Callable[[torch.Tensor, int], torch.Tensor]
_FAR = 1 << 30  # distance of a change that involves a non-action token


class NonFiniteLogitsError(RuntimeError):
    """The model produced NaN or inf logits: its weights or inputs are broken (NaN weights, a zero
    image std...). Greedy decoding of such logits is meaningless (argmax over NaN picks the first
    token, a full-scale action), so the loop refuses them instead of returning tokens.

    Attributes: ``rows`` (batch rows with a non-finite logit) and ``positions`` (the generated
    positions whose prediction was non-finite, over those rows)."""

    def __init__(self, where: str, rows: list[int], positions: list[int]):
        self.rows, self.positions = rows, positions
        super().__init__(
            f"non-finite (NaN/inf) logits from the model at {where}: batch rows {rows}, generated "
            f"positions {positions}; refusing to decode (check the weights and the input normalisation)"
        )


def _nonfinite_error(where: str, bad: torch.Tensor, first_position: int) -> NonFiniteLogitsError:
    """The error for a (B, L) mask of non-finite logit rows whose column 0 predicts `first_position`."""
    rows = torch.nonzero(bad.any(1)).flatten().tolist()
    positions = (torch.nonzero(bad.any(0)).flatten() + first_position).tolist()
    return NonFiniteLogitsError(where, rows, positions)


def token_distance(a: torch.Tensor, b: torch.Tensor, action_range: tuple[int, int] | None) -> torch.Tensor:
    """|a - b| in bins where both are action tokens (ids in the inclusive `action_range`); a huge
    value where they differ and either is not; 0 where equal. Bin distance equals id distance in
    both of `ActionTokenizer`'s layouts."""
    d = (a - b).abs()
    if action_range is None:
        return torch.where(a == b, 0, _FAR)
    lo, hi = action_range
    both = (a >= lo) & (a <= hi) & (b >= lo) & (b <= hi)
    return torch.where(both | (a == b), d, _FAR)


def greedy(logits: torch.Tensor, action_range: tuple[int, int] | None) -> torch.Tensor:
    """Argmax over the vocabulary, or over the action-token block when `action_range` is given."""
    if action_range is None:
        return logits.argmax(-1)
    lo, hi = action_range
    return logits[..., lo : hi + 1].argmax(-1) + lo


@dataclass
class DecodeStats:
    """What one decode call did (batch of B samples, n tokens, units of `unit` tokens = actions)."""

    iterations: int = 0
    """Parallel forward passes after the prefill (AR: n - 1)."""
    forward_passes: int = 1
    """iterations + the prefill."""
    accepted_per_iteration: list[float] = field(default_factory=list)
    """Mean number of tokens that became final in each iteration (over the samples still running)."""
    unit_final_iteration: list[list[int]] = field(default_factory=list)
    """[B][n_units]: the iteration after which each action was final (0 = the prefill)."""
    unit_final_time_s: list[list[float]] = field(default_factory=list)
    """[B][n_units]: seconds since the call started at which each action was final."""
    unit_exact: list[list[bool]] = field(default_factory=list)
    """[B][n_units]: False where an early exit released the action before exact convergence."""
    exit_reason: list[str] = field(default_factory=list)
    """[B]: converged | tau | cap | deadline | action_deadline."""
    wall_s: float = 0.0
    """Seconds from the start of the call (prefill included when the caller timed it) to the end."""
    prefill_s: float = 0.0
    inputs_s: float = 0.0
    """Seconds from the start of the call to its prefill (a policy's: the observation's tensors on
    the device and the guess), where the caller timed it; part of `wall_s`."""
    iteration_s: list[float] = field(default_factory=list)
    n_tokens: int = 0
    batch_size: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.n_tokens * self.batch_size / self.wall_s if self.wall_s > 0 else float("nan")

    @property
    def exact(self) -> bool:
        return all(all(r) for r in self.unit_exact)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["tokens_per_s"] = self.tokens_per_s
        return d


@dataclass
class DecodeState:
    """Snapshot yielded after the prefill and after every iteration."""

    tokens: torch.Tensor
    """(B, n) current window (final prefix + current guesses). The loop updates this tensor in
    place: clone it to keep a trajectory of states."""
    n_final: torch.Tensor
    """(B,) number of leading final tokens."""
    newly_final_units: list[int]
    """Units (actions) that are now final in every sample and were not at the previous snapshot."""
    iteration: int
    done: bool
    stats: DecodeStats


class _DecodeLoop:
    """The state of one `iter_decode` call and its steps: the window `y`, the final counts `F`,
    the samples still running, the per-action records and the exits.

    `F` and `active` live on the model's device (the next iteration's inputs) and, mirrored, on
    the host (`f`, `act`: what the exits and the records read). Both change together, so the loop
    reads the device once per iteration (and once after the prefill): on a GPU every other host
    read would wait for the queue to drain."""

    def __init__(
        self,
        first_logits: torch.Tensor,
        n_tokens: int,
        config: DecodeConfig,
        guess: torch.Tensor | None,
        action_range: tuple[int, int] | None,
        unit: int,
        deadline: float | None,
        unit_deadline: Callable[[int], float | None] | None,
        clock: Callable[[], float],
        t_start: float | None,
        prefill_s: float,
    ):
        if n_tokens < 1:
            raise ValueError(f"n_tokens must be >= 1, got {n_tokens}")
        if n_tokens % unit:
            raise ValueError(f"n_tokens={n_tokens} is not a multiple of unit={unit}")
        if first_logits.ndim not in (2, 3):
            raise ValueError(
                f"first_logits must be (batch, vocab), or (batch, 1 + L, vocab) after a prefill that ran L "
                f"guess tokens, got shape {tuple(first_logits.shape)}"
            )
        self.config, self.action_range, self.unit, self.clock = config, action_range, unit, clock
        self.t0 = clock() if t_start is None else t_start
        if deadline is None and config.deadline_s is not None:
            deadline = self.t0 + config.deadline_s
        self.deadline, self.unit_deadline = deadline, unit_deadline
        self.B, self.n, self.dev = first_logits.shape[0], n_tokens, first_logits.device
        self.n_units = n_tokens // unit
        self.window = config.effective_window or n_tokens
        self.stats = DecodeStats(n_tokens=n_tokens, batch_size=self.B, prefill_s=prefill_s)
        self.F = torch.ones(self.B, dtype=torch.long, device=self.dev)
        self.active = torch.ones(self.B, dtype=torch.bool, device=self.dev)
        self.f = [1] * self.B  # host copies of F and active
        self.act = [True] * self.B
        self.c = 0  # committed KV entries of generated tokens (shared by the batch)
        self.it = 0  # parallel iterations run so far
        if first_logits.ndim == 2:
            self.y = self._first_window(first_logits, guess)
        else:
            self.y = self._window_from_prefill(first_logits, guess)
        self.unit_iter = [[-1] * self.n_units for _ in range(self.B)]
        self.unit_time = [[float("nan")] * self.n_units for _ in range(self.B)]
        self.unit_exact = [[True] * self.n_units for _ in range(self.B)]
        self.reasons = [""] * self.B
        self.emitted = 0  # units final in every sample, already reported

    def _first_window(self, first_logits: torch.Tensor, guess: torch.Tensor | None) -> torch.Tensor:
        """The initial window: token 0 from the prefill, then the guess (or token 0 repeated)."""
        B, n = self.B, self.n
        # one check per call: the prefill's logits (its sync is the one `mark` makes anyway)
        bad_first = ~torch.isfinite(first_logits).all(-1, keepdim=True)
        if bad_first.any():
            raise _nonfinite_error("the prefill", bad_first, 0)
        y = torch.empty(B, n, dtype=torch.long, device=self.dev)
        y[:, 0] = greedy(first_logits, self.action_range)
        if guess is not None:
            if guess.shape != (B, n):
                raise ValueError(f"guess must have shape {(B, n)}, got {tuple(guess.shape)}")
            g = guess[:, 1:].to(self.dev)
            y[:, 1:] = torch.where(g < 0, y[:, :1], g)
        else:
            y[:, 1:] = y[:, :1]
        return y

    def _window_from_prefill(self, logits: torch.Tensor, guess: torch.Tensor | None) -> torch.Tensor:
        """The initial window after a prefill that also ran `guess[:, :L]` after the prompt (a
        Jacobi iteration over a window whose token 0 is a guess too): `logits` (B, 1 + L, V) predict
        positions 0 .. L. Prediction j is exact when the guesses before it were right, so `F` is
        1 + the number of leading right guesses, and their KV entries (the prefill wrote them at
        generated positions 0 ..) are kept."""
        B, n = self.B, self.n
        L = logits.shape[1] - 1
        if guess is None or guess.shape != (B, n):
            raise ValueError(
                f"a prefill that ran guess tokens needs the guess, of shape {(B, n)}, got "
                f"{None if guess is None else tuple(guess.shape)}"
            )
        if not 1 <= L <= n - 1:
            raise ValueError(f"a prefill may run 1 .. {n - 1} guess tokens before an {n}-token chunk, got {L}")
        g = guess.to(self.dev)
        pred = greedy(logits, self.action_range)  # (B, 1 + L): positions 0 .. L
        rest = g[:, L + 1 :]
        y = torch.cat([pred, torch.where(rest < 0, pred[:, -1:], rest)], 1)
        run = torch.cumprod(g[:, :L] == pred[:, :L], dim=1, dtype=torch.long).sum(1)
        checks = torch.stack([(g[:, :L] < 0).any(), torch.isfinite(logits).all()])
        negative, finite, *run_h = torch.cat([checks, run]).tolist()  # the prefill's one host sync
        if negative:
            raise ValueError("the guess tokens a prefill ran must be token ids (>= 0): fill the rows without a guess")
        if not finite:
            raise _nonfinite_error("the prefill", ~torch.isfinite(logits).all(-1), 0)
        self.F = 1 + run  # run <= L <= n - 1
        self.f = [1 + r for r in run_h]
        self.c = min(run_h)  # the right guesses' KV entries, shared by the batch
        return y

    def mark(self, forced: list[int] | None = None) -> list[int]:
        """Record the actions that became final (inexact for `forced` samples); returns the units
        now final in every sample and not reported before."""
        unit, it = self.unit, self.it
        now = self.clock() - self.t0
        f = self.f
        for b in range(self.B):
            for j in range(self.n_units):
                if self.unit_iter[b][j] < 0 and f[b] >= (j + 1) * unit:
                    self.unit_iter[b][j], self.unit_time[b][j] = it, now
                    if forced is not None and b in forced:
                        self.unit_exact[b][j] = False
        all_final = min(f) // unit
        new = list(range(self.emitted, all_final))
        self.emitted = max(self.emitted, all_final)
        return new

    def finish(self, rows: list[bool], b_mask: torch.Tensor, reason: str) -> None:
        """End the running samples among `rows` (host flags per sample; `b_mask` is the same
        selection on the device): the actions that `F` does not cover yet are released as they
        stand (inexact); those already final by `F` (e.g. made final by the very iteration that
        triggers a tau exit) keep their exactness and are recorded by the next `mark`."""
        ending = [b for b in range(self.B) if rows[b] and self.act[b]]
        if not ending:
            return
        f = self.f
        for b in ending:
            self.reasons[b] = reason
            for j in range(self.n_units):
                if self.unit_iter[b][j] < 0 and f[b] < (j + 1) * self.unit:
                    self.unit_exact[b][j] = False
            f[b], self.act[b] = self.n, False
        sel = b_mask & self.active
        self.F = self.F.masked_fill(sel, self.n)
        self.active = self.active & ~sel

    def finish_converged(self) -> None:
        """End the samples whose every token is final."""
        self.finish([f >= self.n for f in self.f], self.F >= self.n, "converged")

    def finish_running(self, reason: str) -> None:
        """End every sample still running (an iteration cap or the call's deadline)."""
        self.finish(self.act, self.active, reason)

    @property
    def running(self) -> bool:
        return any(self.act)

    def snapshot(self, done: bool, new_units: list[int]) -> DecodeState:
        """The state to yield (streaming): the window, a copy of `F`, the units newly final."""
        stats, it = self.stats, self.it
        stats.iterations = it
        stats.forward_passes = it + 1
        stats.unit_final_iteration = self.unit_iter
        stats.unit_final_time_s = self.unit_time
        stats.unit_exact = self.unit_exact
        stats.exit_reason = self.reasons
        stats.wall_s = self.clock() - self.t0
        return DecodeState(self.y, self.F.clone(), new_units, it, done, stats)

    def exits(self, now: float, est_s: float) -> list[int] | None:
        """Apply the cap and the deadlines to the samples still running, given the time `now` and
        the estimated cost `est_s` of the next iteration; returns the units they released, None
        when no exit applied (decided on the host: no device sync then)."""
        config, deadline, unit_deadline = self.config, self.deadline, self.unit_deadline
        if config.max_iterations is not None and self.it >= config.max_iterations:
            self.finish_running("cap")
        elif deadline is not None and now + est_s > deadline:
            self.finish_running("deadline")
        elif unit_deadline is not None:
            unit, f = self.unit, self.f
            forced = []
            for j in range(self.n_units):
                dl = unit_deadline(j)
                if dl is None or now + est_s <= dl:
                    continue
                end = (j + 1) * unit
                late = [b for b in range(self.B) if self.act[b] and f[b] < end]
                if late:
                    forced += late
                    for b in late:
                        f[b] = end
                    self.F = torch.where(self.active & (self.F < end), end, self.F)
            if not forced:
                return None
            released = self.mark(forced)
            self.finish([x >= self.n for x in f], self.F >= self.n, "action_deadline")
            return released
        else:
            return None
        return []

    def exits_before_iteration(self, est_s: float) -> list[int]:
        """The units that the last iteration made final, then those that an exit released (the
        cap and the deadlines, decided before spending another forward pass)."""
        new_units = self.mark()  # units that the last iteration made final
        if self.running:
            new_units += self.exits(self.clock(), est_s) or []
        new_units += self.mark()  # units released by an exit (marked inexact by finish)
        return new_units

    def deadlines_again(self, est_s: float) -> list[int] | None:
        """The deadlines decided again after a snapshot (the consumer's time counts); returns the
        units released, None when no exit applied."""
        released = self.exits(self.clock(), est_s)
        if released is not None:
            released += self.mark()
        return released

    def iterate(self, step: Step) -> float:
        """One parallel iteration over the window: predict, update the guesses that are not
        final, advance `F` and apply the convergence exits; returns its duration in seconds."""
        t_it = self.clock()
        y, F, active, n, ar = self.y, self.F, self.active, self.n, self.action_range
        s = self.c if self.config.keep_final_kv else 0
        e = min(n - 1, s + self.window)
        logits = step(y[:, s:e], s)
        bad = ~torch.isfinite(logits).all(-1)  # (B, e - s): read with the iteration's one sync below
        pred = greedy(logits, ar)  # predictions for positions s+1 .. e
        y_old = y[:, s + 1 : e + 1].clone()
        pos = torch.arange(s + 1, e + 1, device=self.dev)
        frozen = pos[None, :] < F[:, None]  # final tokens keep their value
        upd = active[:, None] & ~frozen
        y[:, s + 1 : e + 1] = torch.where(upd, pred, y_old)
        # inputs s+1 .. e-1 were right if final or confirmed by the new prediction
        right = frozen[:, :-1] | (y_old[:, :-1] == pred[:, :-1])
        run = torch.cumprod(right.long(), dim=1).sum(1) if right.shape[1] else torch.zeros_like(F)
        F_new = torch.where(active, torch.maximum(F, s + 2 + run), F).clamp(max=n)
        # tau 0: a window in which no token moved has converged exactly (F reaches n), so only a
        # relaxed exit needs how far the tokens moved
        moved = torch.where(upd, token_distance(pred, y_old, ar), 0).amax(1) if self.config.tau else None
        n_bad = (bad & active[:, None]).sum()
        B = self.B
        parts = [F_new, run.to(F_new.dtype)] + ([] if moved is None else [moved.to(F_new.dtype)])
        host = torch.cat([*parts, n_bad[None]]).tolist()  # one host sync
        if host[-1]:
            raise _nonfinite_error(f"iteration {self.it + 1}", bad & active[:, None], s + 1)
        f_new, run_h, moved_h = host[:B], host[B : 2 * B], host[2 * B : 3 * B]
        running = [b for b in range(B) if self.act[b]]
        accepted = sum(f_new[b] - self.f[b] for b in running) / max(1, len(running))
        self.stats.accepted_per_iteration.append(float(accepted))
        self.F, self.f = F_new, f_new
        self.it += 1
        self._converge(moved, moved_h, run_h, s, e)
        last_iter_s = self.clock() - t_it
        self.stats.iteration_s.append(last_iter_s)
        return last_iter_s

    def _converge(self, moved: torch.Tensor | None, moved_h: list[int], run_h: list[int], s: int, e: int) -> None:
        """End the samples that converged (exactly, or within `tau` once the window reaches the
        end) and commit the KV entries of the right inputs (`keep_final_kv`); `moved` (None when
        tau is 0) and `run` per sample, `moved_h` and `run_h` their host copies."""
        self.finish_converged()
        tau = self.config.tau
        if moved is not None and e == self.n - 1:
            self.finish([m <= tau for m in moved_h], moved <= tau, "tau")
        if self.config.keep_final_kv and self.running:
            self.c = min(min(s + 1 + run_h[b], self.f[b] - 1) for b in range(self.B) if self.act[b])


def iter_decode(
    step: Step,
    first_logits: torch.Tensor,
    n_tokens: int,
    config: DecodeConfig,
    *,
    guess: torch.Tensor | None = None,
    action_range: tuple[int, int] | None = None,
    unit: int = 1,
    deadline: float | None = None,
    unit_deadline: Callable[[int], float | None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    t_start: float | None = None,
    prefill_s: float = 0.0,
) -> Iterator[DecodeState]:
    """Decode `n_tokens` greedily after a prefill, yielding a `DecodeState` after the prefill and
    after every iteration; the last one has `done=True`.

    Args:
        step: the model step (see module docstring).
        first_logits: (B, V) logits of the prefill's last position (they give token 0); or
            (B, 1 + L, V) when the prefill also ran the guess's first L tokens after the prompt
            (`DecodeConfig.guess_in_prefill`): the prefill is then the first Jacobi iteration too,
            and `guess` must be the tokens it ran (no negative entries among the first L).
        n_tokens: tokens to decode (a chunk: k actions x action_dim).
        config: decoder and exit rules.
        guess: (B, n_tokens) initial window; tokens 1.. are used (token 0 comes from the prefill).
            None: token 0 repeated. A negative entry means "no guess here": that position starts
            as token 0 too, so rows with and without a guess (e.g. a warm start for the episodes
            that have a previous chunk, none for those that just began) share one call.
        action_range: inclusive (lo, hi) ids of the action tokens: restricts the argmax to them and
            measures `tau` in bins. None: full vocabulary, `tau` counts only exact equality.
        unit: tokens per action (streaming, per-action deadlines and per-action stats).
        deadline: absolute `clock()` time by which the call must end (overrides config.deadline_s).
        unit_deadline: absolute time by which action j must be final, or None.
        clock: time source (injectable for tests).
        t_start: when the call started (default: now); prefill_s: how long the prefill took.
    """
    loop = _DecodeLoop(
        first_logits, n_tokens, config, guess, action_range, unit, deadline, unit_deadline, clock, t_start, prefill_s
    )
    loop.finish_converged()
    # the next iteration's cost is estimated by the last one; before the first, by the prefill
    last_iter_s = prefill_s
    while True:
        new_units = loop.exits_before_iteration(last_iter_s)
        if not loop.running:
            yield loop.snapshot(True, new_units)
            return
        yield loop.snapshot(False, new_units)
        # the consumer's time between snapshots counts: decide the deadlines again, now
        if loop.deadline is not None or loop.unit_deadline is not None:
            released = loop.deadlines_again(last_iter_s)
            if released is not None:
                if not loop.running:
                    yield loop.snapshot(True, released)
                    return
                if released:
                    yield loop.snapshot(False, released)
        last_iter_s = loop.iterate(step)


def decode(step: Step, first_logits: torch.Tensor, n_tokens: int, config: DecodeConfig, **kwargs):
    """Run `iter_decode` to the end; returns (tokens (B, n), DecodeStats)."""
    state = last(iter_decode(step, first_logits, n_tokens, config, **kwargs))
    return state.tokens, state.stats


def last(states: Iterator[DecodeState]) -> DecodeState:
    """The final state of a decode stream (consumes it)."""
    return collections.deque(states, maxlen=1)[0]
