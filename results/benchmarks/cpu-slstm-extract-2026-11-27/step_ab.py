"""In-process A/B of this session's three changes to the SLSTM training step (1 layer, 64 hidden,
22x22, batch 50, 2 threads): old and new alternate step by step in one process, and the
parameter gradients of the last step of each are compared bitwise.

    python step_ab.py extract|inplace|onebuffer [alternations]

extract:   ride.neighborhood.Neighborhood.extract by unfold and masks (0c8db29) against the gather
inplace:   BlockedMCGSM of 0c8db29 (input gradients scaled out of place) against the current one
onebuffer: the backward's dL/dz by chunks (keep_dz forced) against one reused buffer
"""
import statistics
import subprocess
import sys
import tempfile
import time
import importlib.util

import torch
import torch.nn.functional as F

from ride.kernels import tune_malloc

tune_malloc()
torch.set_num_threads(2)
import ride.kernels.fused_mcgsm as fm  # noqa: E402
import ride.kernels.fused_slstm as fs  # noqa: E402
from ride.bench import _make_model, _train_step  # noqa: E402
from ride.neighborhood import Neighborhood, check_images  # noqa: E402

OLD = "0c8db29"


def extract_0c8db29(self, images):
    check_images(images)
    n_img, height, width = images.shape
    self.check_image_shape(height, width)
    gh, gw = self.grid_shape(height, width)
    windows = F.unfold(images.unsqueeze(1), kernel_size=(self.rows, self.cols))
    windows = windows.transpose(1, 2).reshape(n_img, gh, gw, self.rows * self.cols)
    return windows[..., self.mask().flatten()], windows[..., self.target[0] * self.cols + self.target[1]]


def variants(mode):
    if mode == "extract":
        new = Neighborhood.extract
        return {"old": lambda: setattr(Neighborhood, "extract", extract_0c8db29),
                "new": lambda: setattr(Neighborhood, "extract", new)}
    if mode == "inplace":
        src = subprocess.run(["git", "show", f"{OLD}:ride/kernels/fused_mcgsm.py"], capture_output=True, text=True,
                             check=True).stdout
        path = tempfile.NamedTemporaryFile("w", suffix=".py", delete=False)
        path.write(src)
        path.close()
        spec = importlib.util.spec_from_file_location("ride.kernels.fused_mcgsm_old", path.name)
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)
        new = fm.BlockedMCGSM
        return {"old": lambda: setattr(fm, "BlockedMCGSM", old.BlockedMCGSM),
                "new": lambda: setattr(fm, "BlockedMCGSM", new)}
    if mode == "onebuffer":
        sweep = fs._fused_backward_c

        def chunked(*a, **k):
            k["keep_dz"] = True
            return sweep(*a, **k)

        return {"old": lambda: fs._BACKWARD.__setitem__("c", chunked),
                "new": lambda: fs._BACKWARD.__setitem__("c", sweep)}
    raise SystemExit(__doc__)


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 60
    switch = variants(mode)
    model, images = _make_model(1, 64, 22, 50, torch.device("cpu"))
    times = {k: [] for k in switch}
    grads = {}
    for name, use in switch.items():
        use()
        for _ in range(3):
            _train_step(model, images, "auto")
    for _ in range(n):
        for name, use in switch.items():
            use()
            t = time.perf_counter()
            _train_step(model, images, "auto")
            times[name].append(time.perf_counter() - t)
            grads[name] = [p.grad.clone() for p in model.parameters()]
    ratio = statistics.median(a / b for a, b in zip(times["new"], times["old"]))
    same = all(torch.equal(a, b) for a, b in zip(grads["old"], grads["new"]))
    print(f"{mode}: old {1e3 * statistics.median(times['old']):.2f} ms, new {1e3 * statistics.median(times['new']):.2f} ms "
          f"(medians of {n}); median new/old {ratio:.3f}; gradients bitwise equal: {same}")


if __name__ == "__main__":
    main()
