# Reference solutions of notebook 05 (issue 36), and a wrong answer planted for each exercise: the tests execute
# the notebook with these cells in place of its exercise cells (tests/test_notebook_labs.py).

# %% 05.threads
speedup = rows["packed"]["epoch_s"] / rows["openmp"]["epoch_s"]
helped = speedup >= nb05.NOISE
lab.check("05.threads", (speedup, helped), rows=rows, threads=threads);

# %% wrong 05.threads
# a difference of times, not a ratio
speedup = rows["packed"]["epoch_s"] - rows["openmp"]["epoch_s"]
helped = speedup > 0
lab.check("05.threads", (speedup, helped), rows=rows, threads=threads);

# %% 05.linear_backward
def linear_backward(x, W, dy):
    dW = dy.T @ x  # shape (out, in)
    db = dy.sum(axis=0)  # shape (out,)
    dX = dy @ W  # shape (batch, in)
    return dW, db, dX

lab.check("05.linear_backward", linear_backward);

# %% wrong 05.linear_backward
# the bias gradient averaged over the batch instead of summed
def linear_backward(x, W, dy):
    dW = dy.T @ x  # shape (out, in)
    db = dy.mean(axis=0)  # shape (out,)
    dX = dy @ W  # shape (batch, in)
    return dW, db, dX

lab.check("05.linear_backward", linear_backward);

# %% 05.amdahl
cap = 1 / (1 - share)
lab.check("05.amdahl", cap, share=share);

# %% wrong 05.amdahl
# the fraction of the step left, not the speed-up
cap = 1 - share
lab.check("05.amdahl", cap, share=share);
