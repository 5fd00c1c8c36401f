# Reference solutions of notebooks/07_more_than_one_machine.ipynb, and a wrong answer planted in each exercise
# (tests/test_notebook_labs.py runs the notebook with them: each check must pass its solution and fail the wrong
# answer).

# %% 07.two_ranks
added = {p: two[p] - one[p] for p in PARTS}  # seconds each part added per step
answer = max(added, key=added.get)

lab.check("07.two_ranks", answer, one=one, two=two)

# %% wrong 07.two_ranks
added = {p: two[p] - one[p] for p in PARTS}
answer = min(added, key=added.get)  # the part that grew the least

lab.check("07.two_ranks", answer, one=one, two=two)

# %% 07.allreduce_formula
import math


def allreduce_time(S, P, alpha, bw):
    if P == 1:
        return 0.0
    return 2 * math.ceil(math.log2(P)) * alpha + 2 * (P - 1) / P * S / bw


lab.check("07.allreduce_formula", allreduce_time)

# %% wrong 07.allreduce_formula
import math


def allreduce_time(S, P, alpha, bw):
    return alpha + S / bw  # one message: no tree steps, the gradient sent once


lab.check("07.allreduce_formula", allreduce_time)

# %% 07.bigger_batch
c0, c1 = digits_fit["c0_s"], digits_fit["c1_s_per_sample"]
comm8 = scaleout.system_allreduce_s({"link": "InfiniBand EDR", "latency": "tree"}, S_digits, 8)
print(f"c0 = {1e3 * c0:.4f} ms, c1 = {1e6 * c1:.3f} us per sample, allreduce at P = 8: {1e6 * comm8:.2f} us")

prediction = (c0 + c1 * 512) / (8 * (c0 + c1 * 512 / 8 + comm8))

lab.check("07.bigger_batch", prediction, c0_s=c0, c1_s=c1, comm_s=comm8, batch=512, ranks=8)

# %% wrong 07.bigger_batch
c0, c1 = digits_fit["c0_s"], digits_fit["c1_s_per_sample"]
comm8 = scaleout.system_allreduce_s({"link": "InfiniBand EDR", "latency": "tree"}, S_digits, 8)
print(f"c0 = {1e3 * c0:.4f} ms, c1 = {1e6 * c1:.3f} us per sample, allreduce at P = 8: {1e6 * comm8:.2f} us")

prediction = (c1 * 512) / (8 * (c1 * 512 / 8 + comm8))  # forgets the fixed cost each rank pays whole

lab.check("07.bigger_batch", prediction, c0_s=c0, c1_s=c1, comm_s=comm8, batch=512, ranks=8)
