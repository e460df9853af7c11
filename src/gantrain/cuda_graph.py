"""Replay the whole D+G step as one CUDA graph: one launch per step instead of hundreds.

A step is a fixed sequence of kernels on fixed-size tensors, so after a few eager warm-up steps (which
create the optimizer state and let cuBLAS allocate its workspace) it is captured once; later calls copy
their inputs into static buffers and replay. The captured step must not sync with the host, must draw
no random numbers (batches and noise are made outside it) and needs capturable optimizers.
A step whose keyword flags change its kernels (r1=False on a lazy-R1 step) gets one graph per flag set.
"""
import logging

import torch

log = logging.getLogger("gantrain")
WARMUP_STEPS = 3  # eager steps before capture; PyTorch's whole-network capture example uses 3


def graphed(step, warmup: int = WARMUP_STEPS):
    """Wrap step(*tensors, **flags) -> stats: eager for `warmup` calls of a flag set, then captured and replayed.

    Every call is a real training step, warm-up and capture included. If capture fails the wrapper
    logs one line and stays eager, which gives the same results, only slower.
    """
    graphs: dict[tuple, dict] = {}  # flag set -> its calls, graph, static inputs and output
    side, failed = torch.cuda.Stream(), []

    def eager_on_side_stream(*args, **flags):
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            out = step(*args, **flags)
        torch.cuda.current_stream().wait_stream(side)
        return out

    def capture(state: dict, *args, **flags) -> torch.Tensor:
        inputs = tuple(a.clone() for a in args)
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize()
        with torch.cuda.graph(graph):
            output = step(*inputs, **flags)
        state.update(graph=graph, inputs=inputs, output=output)
        graph.replay()  # capturing recorded the kernels without running them: run this call's step now
        return output.clone()

    def run(*args, **flags):
        state = graphs.setdefault(tuple(sorted(flags.items())), {"calls": 0, "graph": None})
        state["calls"] += 1
        if state["graph"] is not None:
            for buffer, value in zip(state["inputs"], args):
                buffer.copy_(value)
            state["graph"].replay()
            return state["output"].clone()  # the static output is overwritten by the next replay
        if failed or state["calls"] <= warmup:
            return eager_on_side_stream(*args, **flags)
        try:
            return capture(state, *args, **flags)
        except Exception as e:  # capture is an optimisation: never let it stop training
            failed.append(e)
            log.warning(f"CUDA graph capture failed ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                        f"continuing eagerly (set trainer.cuda_graph=false to skip the attempt)")
            return eager_on_side_stream(*args, **flags)

    run.skipped = 0  # graphed only with on_nan=stop, which skips nothing; the loop reads it as it reads step's
    return run
