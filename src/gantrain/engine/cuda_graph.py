"""Replay the whole D+G step as one CUDA graph: one launch per step instead of hundreds.

A step is a fixed sequence of kernels on fixed-size tensors, so after a few eager warm-up steps (which
create the optimizer state and let cuBLAS allocate its workspace) it is captured once; later calls copy
their inputs into static buffers and replay. The captured step must not sync with the host, must draw
no random numbers (its inputs, noise included, are drawn before it: engine/inputs.py) and needs
capturable optimizers. A step whose keyword flags change its kernels (r1=False on a lazy-R1 step) gets
one graph per flag set.
"""
import logging

import torch

log = logging.getLogger("gantrain")
WARMUP_STEPS = 3  # eager steps before capture; PyTorch's whole-network capture example uses 3


def graphed(step, warmup: int = WARMUP_STEPS):
    """Wrap step(inputs: dict of tensors, **flags) -> stats: eager for `warmup` calls of a flag set, then
    captured and replayed.

    Every call is a real training step, warm-up and capture included. If capture fails the wrapper
    logs one line and stays eager, which gives the same results, only slower.
    """
    graphs: dict[tuple, dict] = {}  # flag set -> its calls, graph, static inputs and output
    side, failed = torch.cuda.Stream(), []

    def eager_on_side_stream(inputs, **flags):
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            out = step(inputs, **flags)
        torch.cuda.current_stream().wait_stream(side)
        return out

    def capture(state: dict, inputs, **flags) -> torch.Tensor:
        static = {name: value.clone() for name, value in inputs.items()}
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize()
        with torch.cuda.graph(graph):
            output = step(static, **flags)
        state.update(graph=graph, inputs=static, output=output)
        graph.replay()  # capturing recorded the kernels without running them: run this call's step now
        return output.clone()

    def run(inputs: dict[str, torch.Tensor], **flags):
        state = graphs.setdefault(tuple(sorted(flags.items())), {"calls": 0, "graph": None})
        state["calls"] += 1
        if state["graph"] is not None:
            for name, buffer in state["inputs"].items():
                buffer.copy_(inputs[name])
            state["graph"].replay()
            return state["output"].clone()  # the static output is overwritten by the next replay
        if failed or state["calls"] <= warmup:
            return eager_on_side_stream(inputs, **flags)
        try:
            return capture(state, inputs, **flags)
        except Exception as e:  # capture is an optimisation: never let it stop training
            failed.append(e)
            log.warning(f"CUDA graph capture failed ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                        f"continuing eagerly (set trainer.cuda_graph=false to skip the attempt)")
            return eager_on_side_stream(inputs, **flags)

    return run
