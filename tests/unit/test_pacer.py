"""The redis-keeper's refill pace (seeder.redis_fill.Pacer): full speed while the keeper
barely waits for a CPU, slower the longer it waits, never slower than its floor, and back to
full speed once the machine calms; the kernel's own counters of this thread are readable."""

from __future__ import annotations

from seeder.redis_fill import Pacer, _schedstat


class FakeSched:
    """schedstat readings whose next step waited `ratio` times as long as it ran."""

    def __init__(self) -> None:
        self.ran = self.waited = 0
        self.ratio = 0.0

    def __call__(self) -> tuple[int, int]:
        self.ran += 1_000_000
        self.waited += int(self.ratio * 1_000_000)
        return self.ran, self.waited


def pacer(rate: float = 10_000) -> tuple[Pacer, FakeSched, list[float]]:
    sched, sleeps = FakeSched(), []
    return Pacer(rate, schedstat=sched, sleep=sleeps.append), sched, sleeps


def test_a_calm_machine_gets_the_full_rate() -> None:
    p, sched, _ = pacer()
    sched.ratio = 1.0
    for _ in range(50):
        p.done(1_000)
    assert p.rate == 10_000


def test_a_busy_machine_slows_the_refill_to_its_floor_and_no_further() -> None:
    p, sched, _ = pacer()
    sched.ratio = 20.0
    rates = []
    for _ in range(50):
        p.done(1_000)
        rates.append(p.rate)
    assert rates == sorted(rates, reverse=True)  # slower and slower while it stays busy
    assert p.rate == 10_000 * Pacer.SLOWEST


def test_in_between_the_rate_is_in_proportion_and_recovers() -> None:
    p, sched, _ = pacer()
    sched.ratio = (Pacer.CALM + Pacer.BUSY) / 2
    for _ in range(100):
        p.done(1_000)
    assert abs(p.rate - 5_000) < 100
    sched.ratio = 0.5
    for _ in range(100):
        p.done(1_000)
    assert p.rate == 10_000


def test_each_batch_waits_out_its_own_share_only() -> None:
    p, sched, sleeps = pacer(rate=1_000)
    sched.ratio = 1.0
    p.done(100)  # 100 records at 1,000/s: a tenth of a second, less what the batch took
    assert 0.09 < sleeps[-1] <= 0.1


def test_the_kernel_counts_this_threads_running_and_waiting() -> None:
    first = _schedstat()
    assert first is not None  # Linux: /proc/thread-self/schedstat
    sum(i * i for i in range(200_000))  # some running of our own
    second = _schedstat()
    assert second is not None and second[0] > first[0] and second[1] >= first[1]
