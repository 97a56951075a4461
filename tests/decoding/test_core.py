"""The decode loop's exits, statistics and streaming, on a scripted fake model with a fake clock."""

import pytest
import torch

from ee_vla.decoding import DecodeConfig, NonFiniteLogitsError, decode, iter_decode, token_distance

LO, HI = 100, 355  # action-token block


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class CountingStep:
    """A 'model' whose greedy next token is the previous token + 1, with a KV cache it checks:
    outputs only depend on the cached inputs below `start` and the window, like a transformer."""

    def __init__(self, batch: int, clock: Clock | None = None, cost_s: float = 0.01):
        self.cached = [[] for _ in range(batch)]
        self.clock, self.cost_s, self.calls = clock, cost_s, 0

    def __call__(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        B, L = tokens.shape
        logits = torch.zeros(B, L, HI + 1, dtype=torch.float64)
        for b in range(B):
            assert start <= len(self.cached[b]), "window starts past the committed cache"
            self.cached[b] = self.cached[b][:start] + tokens[b].tolist()
            for i in range(L):
                logits[b, i, min(self.cached[b][start + i] + 1, HI)] = 1.0
        self.calls += 1
        if self.clock is not None:
            self.clock.t += self.cost_s
        return logits


def first_logits(batch: int, token: int = LO) -> torch.Tensor:
    out = torch.zeros(batch, HI + 1, dtype=torch.float64)
    out[:, token] = 1.0
    return out


def test_exact_decoding_counts_and_stats():
    step = CountingStep(2)
    tokens, stats = decode(step, first_logits(2), 9, DecodeConfig(method="jacobi"), action_range=(LO, HI), unit=3)
    assert tokens.tolist() == [list(range(LO, LO + 9))] * 2
    # the repeat guess is all wrong after token 0, so one token becomes final per iteration
    assert stats.iterations == 8 and stats.forward_passes == 9 == step.calls + 1
    assert stats.accepted_per_iteration == [1.0] * 8
    assert stats.unit_final_iteration == [[2, 5, 8]] * 2
    assert stats.exact and stats.exit_reason == ["converged", "converged"]


def test_a_right_guess_converges_in_one_iteration():
    guess = torch.arange(LO, LO + 9).repeat(3, 1)
    tokens, stats = decode(CountingStep(3), first_logits(3), 9, DecodeConfig(method="jacobi"), guess=guess)
    assert torch.equal(tokens, guess) and stats.iterations == 1 and stats.accepted_per_iteration == [8.0]


def test_negative_guess_rows_start_like_no_guess():
    """A row of -1 is "no guess": with a cap of 1 iteration (output = f(initial window)) it decodes
    as that sample alone without a guess, while the other row keeps its own (right) guess."""
    cfg = DecodeConfig(method="ceed", max_iterations=1)
    right = torch.arange(LO, LO + 9)
    guess = torch.stack([right, torch.full((9,), -1)])
    tokens, stats = decode(CountingStep(2), first_logits(2), 9, cfg, guess=guess)
    alone, _ = decode(CountingStep(1), first_logits(1), 9, cfg)
    assert torch.equal(tokens[0], right) and torch.equal(tokens[1], alone[0])
    assert stats.exit_reason == ["converged", "cap"]


def test_iteration_cap_releases_the_window_as_is():
    cfg = DecodeConfig(method="ceed", max_iterations=2)
    tokens, stats = decode(CountingStep(1), first_logits(1), 9, cfg, unit=3)
    assert stats.iterations == 2 and stats.exit_reason == ["cap"]
    assert stats.unit_exact == [[True, False, False]]
    assert tokens[0, :3].tolist() == [LO, LO + 1, LO + 2]


@pytest.mark.parametrize("tau, iterations, reason", [(0, 8, "converged"), (1, 1, "tau")])
def test_relaxed_convergence(tau, iterations, reason):
    # first iteration moves every guessed token by exactly one bin
    _, stats = decode(CountingStep(1), first_logits(1), 9, DecodeConfig(method="ceed", tau=tau), action_range=(LO, HI))
    assert stats.iterations == iterations and stats.exit_reason == [reason]


def test_tau_never_accepts_a_change_of_a_non_action_token():
    assert token_distance(torch.tensor([5, LO]), torch.tensor([6, LO + 3]), (LO, HI)).tolist() == [1 << 30, 3]
    assert token_distance(torch.tensor([5]), torch.tensor([5]), (LO, HI)).tolist() == [0]


def test_wall_clock_deadline_stops_before_an_overrunning_iteration():
    clock = Clock()
    cfg = DecodeConfig(method="ceed", deadline_s=0.025)
    _, stats = decode(CountingStep(1, clock), first_logits(1), 9, cfg, clock=clock)
    assert stats.iterations == 2 and stats.exit_reason == ["deadline"]  # a third would end at 0.03


def test_action_deadline_freezes_that_action_and_decodes_the_rest_after_it():
    clock = Clock()
    deadlines = {0: 0.005}
    cfg = DecodeConfig(method="jacobi")
    states = list(
        iter_decode(CountingStep(1, clock), first_logits(1), 9, cfg, unit=3, unit_deadline=deadlines.get, clock=clock)
    )
    final = states[-1]
    # after iteration 1 the window is [LO, LO+1, LO+1, ...]: action 0 is released with its guess
    assert final.tokens[0].tolist() == [LO, LO + 1, LO + 1, LO + 2, LO + 3, LO + 4, LO + 5, LO + 6, LO + 7]
    assert final.stats.unit_exact == [[False, True, True]]
    emitted = [u for s in states for u in s.newly_final_units]
    assert emitted == [0, 1, 2] and states[1].newly_final_units == [0]
    assert final.done and not any(s.done for s in states[:-1])


def test_per_sample_convergence_in_a_batch():
    guess = torch.stack([torch.arange(LO, LO + 6), torch.full((6,), LO)])
    step = CountingStep(2)
    states = list(iter_decode(step, first_logits(2), 6, DecodeConfig(method="jacobi"), guess=guess))
    assert states[-1].tokens.tolist() == [list(range(LO, LO + 6))] * 2
    assert states[1].n_final.tolist() == [6, 2]  # sample 0 converged in one iteration, sample 1 did not
    assert states[-1].stats.iterations == 5


def test_ar_is_a_one_token_window():
    step = CountingStep(1)
    tokens, stats = decode(step, first_logits(1), 5, DecodeConfig(method="ar"))
    assert tokens[0].tolist() == list(range(LO, LO + 5)) and stats.iterations == 4 and step.calls == 4


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(method="beam"), "method"),
        (dict(method="jacobi", tau=2), "CEED early-exit"),
        (dict(method="ceed", max_iterations=0), "max_iterations"),
        (dict(window=4, keep_final_kv=False), "keep_final_kv"),
        (dict(deadline_s=0), "deadline_s"),
        (dict(init="zeros"), "init"),
    ],
)
def test_config_errors_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DecodeConfig(**kwargs)


def test_bad_call_arguments():
    with pytest.raises(ValueError, match="multiple of unit"):
        decode(CountingStep(1), first_logits(1), 8, DecodeConfig(), unit=3)
    with pytest.raises(ValueError, match="guess must have shape"):
        decode(CountingStep(1), first_logits(1), 6, DecodeConfig(), guess=torch.zeros(1, 5, dtype=torch.long))


def test_presets_say_what_they_bound():
    """`ceed` is relaxed convergence (tau=1, no cap); `ceed_cap` is CEED's fixed cap of 2
    iterations with exact convergence otherwise; `ceed_2pass` is a cap of 1 after a prefill that
    runs the warm guess; the user-facing names keep working."""
    ceed, cap = DecodeConfig.preset("ceed"), DecodeConfig.preset("ceed_cap")
    assert (ceed.method, ceed.tau, ceed.max_iterations) == ("ceed", 1, None)
    assert (cap.method, cap.tau, cap.max_iterations) == ("ceed", 0, 2)
    assert DecodeConfig.preset("ar").method == "ar" and DecodeConfig.preset("jacobi").tau == 0
    _, stats = decode(CountingStep(1), first_logits(1), 9, cap, action_range=(LO, HI))
    assert stats.forward_passes == 3 and stats.exit_reason == ["cap"]
    two = DecodeConfig.preset("ceed_2pass")
    assert two == DecodeConfig.from_spec("ceed_cap:max_iterations=1:guess_in_prefill=true")
    assert (two.tau, two.max_iterations, two.init, two.guess_in_prefill) == (0, 1, "warm", True)
    _, stats = decode(CountingStep(1), first_logits(1), 9, two, action_range=(LO, HI))
    assert stats.forward_passes == 2 and stats.exit_reason == ["cap"]
    with pytest.raises(ValueError, match="ceed_cap"):
        DecodeConfig.preset("fast")


def test_a_tau_exit_keeps_the_actions_its_own_iteration_made_exact():
    """The iteration that triggers the tau exit also confirms tokens 0..4: action 0 became final
    (exactly) in that iteration and must say so; actions 1 and 2 are released inexact."""
    guess = torch.tensor([[LO, LO + 1, LO + 2, LO + 3, LO + 5, LO + 6, LO + 7, LO + 8, LO + 9]])
    cfg = DecodeConfig(method="ceed", tau=1)
    states = list(iter_decode(CountingStep(1), first_logits(1), 9, cfg, guess=guess, action_range=(LO, HI), unit=3))
    stats = states[-1].stats
    assert stats.exit_reason == ["tau"] and stats.iterations == 1
    assert stats.unit_exact == [[True, False, False]]
    assert stats.unit_final_iteration == [[1, 1, 1]]


class SlowConsumer:
    """Drives `iter_decode` like a streaming consumer that spends `delay_s` of clock per snapshot."""

    def __init__(self, clock: Clock, delay_s: float):
        self.clock, self.delay_s = clock, delay_s

    def run(self, states):
        out = []
        for st in states:
            out.append((st.iteration, list(st.newly_final_units), st.tokens.clone()))
            self.clock.t += self.delay_s
        return out, st


def test_deadline_counts_the_consumers_time_between_snapshots():
    clock = Clock()
    step = CountingStep(1, clock, cost_s=0.01)
    cfg = DecodeConfig(method="jacobi", deadline_s=0.045)
    _, final = SlowConsumer(clock, 0.02).run(iter_decode(step, first_logits(1), 9, cfg, clock=clock))
    # iteration 1 ends at 0.03, the consumer returns at 0.05: a second iteration would overrun
    assert final.stats.iterations == 1 and final.stats.exit_reason == ["deadline"] and step.calls == 1


def test_the_first_iteration_is_guarded_by_the_prefill_time():
    clock = Clock()
    clock.t = 0.01  # the prefill (started at 0) took 0.01 s
    step = CountingStep(1, clock, cost_s=0.01)
    cfg = DecodeConfig(method="jacobi", deadline_s=0.015)
    tokens, stats = decode(step, first_logits(1), 9, cfg, clock=clock, t_start=0.0, prefill_s=0.01)
    assert stats.iterations == 0 and stats.exit_reason == ["deadline"] and step.calls == 0
    assert tokens[0].tolist() == [LO] * 9


def test_action_deadline_counts_the_consumers_time():
    """Action 0 is due at 0.015; the consumer returns from the prefill's snapshot at 0.02, so the
    action is released with its tokens as they stand, without spending another iteration."""
    clock = Clock()
    cfg = DecodeConfig(method="jacobi")
    states = iter_decode(
        CountingStep(1, clock), first_logits(1), 9, cfg, unit=3, unit_deadline={0: 0.015}.get, clock=clock
    )
    seen, final = SlowConsumer(clock, 0.02).run(states)
    assert final.stats.unit_final_iteration[0][0] == 0 and final.stats.unit_exact[0][0] is False
    assert final.tokens[0, :3].tolist() == [LO, LO, LO]
    assert [u for _, units, _ in seen for u in units] == [0, 1, 2]


class NaNStep(CountingStep):
    """CountingStep whose logits are NaN for `rows` (a broken network or input)."""

    def __init__(self, batch: int, rows: list[int]):
        super().__init__(batch)
        self.rows = rows

    def __call__(self, tokens, start):
        logits = super().__call__(tokens, start)
        logits[self.rows] = float("nan")
        return logits


def test_non_finite_logits_are_refused_naming_rows_and_positions():
    with pytest.raises(NonFiniteLogitsError, match=r"rows \[1\], generated positions \[1, 2, 3, 4, 5\]") as e:
        decode(NaNStep(3, [1]), first_logits(3), 6, DecodeConfig(method="jacobi"), action_range=(LO, HI))
    assert e.value.rows == [1] and isinstance(e.value, RuntimeError)
    bad = first_logits(2)
    bad[0, 7] = float("inf")
    with pytest.raises(NonFiniteLogitsError, match=r"prefill: batch rows \[0\]"):
        decode(CountingStep(2), bad, 6, DecodeConfig(method="ar"), action_range=(LO, HI))


def test_non_finite_logits_are_refused_by_every_decoder():
    for name in ("ar", "jacobi", "ceed", "ceed_cap", "ceed_2pass"):
        with pytest.raises(NonFiniteLogitsError):
            decode(NaNStep(1, [0]), first_logits(1), 6, DecodeConfig.preset(name), action_range=(LO, HI))


def _count_host_reads(monkeypatch) -> list[str]:
    """Record every `tolist`, `item` and truth test of a tensor made by the decode loop's own code
    (on a GPU each one waits for the queue to drain)."""
    import sys

    reads = []
    for name in ("tolist", "item", "__bool__"):
        real = getattr(torch.Tensor, name)

        def counted(self, *args, _real=real, _name=name):
            if sys._getframe(1).f_globals.get("__name__") == "ee_vla.decoding.core":
                reads.append(_name)
            return _real(self, *args)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return reads


@pytest.mark.parametrize("window_in_prefill", [False, True])
def test_the_loop_reads_the_device_once_after_the_prefill_and_once_per_iteration(monkeypatch, window_in_prefill):
    """Per-sample convergence, a per-action deadline and the iteration cap are decided on host
    copies: the loop's host reads are one for the prefill's logits and one per iteration."""
    clock = Clock()
    B, n = 3, 12
    guess = torch.stack([torch.arange(LO, LO + n), torch.full((n,), LO), torch.arange(LO, LO + n)])
    guess[2, 5:] = LO  # right up to token 4
    logits, step = first_logits(B), CountingStep(B, clock)
    if window_in_prefill:  # the prefill also ran guess tokens 0 .. 3: their predictions are the next tokens
        L = 4
        logits = torch.zeros(B, 1 + L, HI + 1, dtype=torch.float64)
        logits[:, 0, LO] = 1.0
        for b in range(B):
            for i in range(L):
                logits[b, 1 + i, min(int(guess[b, i]) + 1, HI)] = 1.0
            step.cached[b] = guess[b, :L].tolist()  # the prefill wrote them to the cache
    reads = _count_host_reads(monkeypatch)
    cfg = DecodeConfig(method="ceed", init="repeat", max_iterations=4)
    states = list(
        iter_decode(
            step,
            logits,
            n,
            cfg,
            guess=guess,
            unit=3,
            unit_deadline={2: 0.025}.get,
            clock=clock,
            action_range=(LO, HI),
        )
    )
    stats = states[-1].stats
    assert stats.iterations == 4 and "cap" in stats.exit_reason and "action_deadline" not in stats.exit_reason
    assert stats.unit_exact[1][2] is False  # the deadline froze action 2 of the slow sample
    assert stats.exit_reason[0] == "converged" and states[1].n_final.tolist()[0] == n
    assert len(reads) == 1 + stats.iterations, reads
