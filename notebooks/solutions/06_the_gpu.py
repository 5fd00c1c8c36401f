# Reference solutions and planted wrong answers of notebooks/06_the_gpu.ipynb (issue 36; tests/_labs.py reads
# this file): each block is the whole exercise cell, solved or with a wrong answer.

# %% 06.tile_loads
# Exercise 06.tile_loads -- the global loads one output costs in a T x T shared-memory tiled GEMM.
def loads_per_output(T, k):
    # per T steps of k the block loads a T x T tile of A and one of B: 2 T^2 loads for T^2 outputs
    return 2 * k / T


lab.check("06.tile_loads", loads_per_output)

# %% wrong 06.tile_loads
def loads_per_output(T, k):
    return k / T   # forgets that B is loaded too


lab.check("06.tile_loads", loads_per_output)

# %% 06.h100_time
# Exercise 06.h100_time -- the roofline: the larger of the compute time and the memory time.
flops = 2 * N**3
nbytes = 3 * N * N * 4
predicted_ms = 1e3 * max(flops / (H["fp32_peak_gflops"] * 1e9), nbytes / (H["hbm_gbps"] * 1e9))

lab.check("06.h100_time", predicted_ms, n=N)

# %% wrong 06.h100_time
nbytes = 3 * N * N * 4
predicted_ms = 1e3 * nbytes / (H["hbm_gbps"] * 1e9)   # the memory time alone

lab.check("06.h100_time", predicted_ms, n=N)

# %% 06.ridge
# Exercise 06.ridge -- peak FLOP/s over bytes per second.
ridges = (CPU_PEAK / CPU_DRAM, H["fp32_peak_gflops"] / H["hbm_gbps"])

lab.check("06.ridge", ridges, cpu_gflops=CPU_PEAK, cpu_gbps=CPU_DRAM)

# %% wrong 06.ridge
ridges = (CPU_DRAM / CPU_PEAK, H["hbm_gbps"] / H["fp32_peak_gflops"])   # upside down

lab.check("06.ridge", ridges, cpu_gflops=CPU_PEAK, cpu_gbps=CPU_DRAM)

# %% 06.min_tile
# Exercise 06.min_tile -- T / 4 FLOP per byte must reach the ridge: T >= 4 x ridge.
import math

tile = math.ceil(4 * H["fp32_peak_gflops"] / H["hbm_gbps"])

lab.check("06.min_tile", tile)

# %% wrong 06.min_tile
tile = 32   # cuda_smem's tile

lab.check("06.min_tile", tile)
