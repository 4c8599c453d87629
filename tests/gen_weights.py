#!/usr/bin/env python3
"""Weight-file fixtures for the Rust `weights` tests (tests/weights_*.rs).

Run as `.venv/bin/python3 tests/gen_weights.py --out fixtures/weights` (the Makefile's `fixtures`
target does). Everything is seeded and built from the venv's own torch/torchvision/timm with
random initialisation (no downloads), so the output is deterministic for a given torch version.

It writes:
  * good files: torchvision mobilenet_v2 / timm mobilenetv1 state dicts in torch zip, torch legacy
    (`_use_new_zipfile_serialization=False`) and safetensors form, fp16/bf16 copies, wrapped
    checkpoints ({"state_dict": ..}, {"model": .., "epoch": 3, "optimizer": ..},
    {"model_state_dict": ..}), a DDP `module.`-prefixed one, views sharing one storage, one
    tensor of each dtype (also big-endian), and files for architecture detection;
  * refused files: `torch.save(model)` and malicious pickles (os.system, builtins.eval,
    subprocess.Popen). These are only *written* here (pickling a reference to a function never
    calls it); they are never loaded in Python;
  * bad files: empty, wrong magic, truncated, corrupted (CRC), unknown opcode, out-of-range
    storage offsets/sizes, shapes that do not fit their storage, ...;
  * expected.json: for every good file its format and, for each tensor in file order, the key,
    dtype, shape and the CRC-32 of its contiguous little-endian bytes (plus the values of small
    tensors), so the Rust tests check every tensor bit for bit; for every bad/refused file the
    words its error must contain.
"""

import argparse
import collections
import io
import json
import os
import pickle
import shutil
import sys
import zipfile
import zlib

import torch

OUT = None
EXPECTED = {"files": {}, "states": {}, "bad": {}, "arch": {}}


# ----------------------------------------------------------------------------------------------
# helpers


def path(name):
    return os.path.join(OUT, name)


def tensor_bytes(t):
    t = t.detach().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes()


def describe(sd):
    """Expected entries of a state dict: [key, dtype, shape, crc32, values-or-None]."""
    out = []
    for k, t in sd.items():
        dtype = str(t.dtype).replace("torch.", "")
        values = None
        if t.numel() <= 64:
            if t.dtype.is_floating_point:
                values = [float(v) for v in t.detach().reshape(-1).to(torch.float64).tolist()]
            else:
                values = [int(v) for v in t.detach().reshape(-1).to(torch.int64).tolist()]
        out.append([k, dtype, list(t.shape), zlib.crc32(tensor_bytes(t)), values])
    return out


def good(name, state, fmt, sd=None):
    """Registers a good file: `state` names the expected state dict (after unwrapping)."""
    if sd is not None and state not in EXPECTED["states"]:
        EXPECTED["states"][state] = describe(sd)
    EXPECTED["files"][name] = {"format": fmt, "state": state}


def bad(name, *words):
    EXPECTED["bad"][name] = list(words)


def save_zip(obj, name):
    torch.save(obj, path(name))


def save_legacy(obj, name):
    torch.save(obj, path(name), _use_new_zipfile_serialization=False)


def save_st(sd, name):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, path(name), metadata={"format": "pt"})


def zip_entries(data):
    z = zipfile.ZipFile(io.BytesIO(data))
    return [(i.filename, z.read(i.filename)) for i in z.infolist()]


def write_zip(name, entries, compress=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path(name), "w", compression=compress) as z:
        for n, d in entries:
            z.writestr(zipfile.ZipInfo(n, date_time=(2024, 1, 1, 0, 0, 0)), d, compress_type=compress)


def torch_zip_bytes(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def legacy_bytes(obj):
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


def seeded_state(make):
    torch.manual_seed(0)
    m = make()
    # Make the BN buffers non-trivial so they are checked too.
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-1, 1)
            mod.running_var.uniform_(0.5, 2)
            mod.num_batches_tracked.fill_(7)
    return m, collections.OrderedDict((k, v.detach().clone()) for k, v in m.state_dict().items())


# ----------------------------------------------------------------------------------------------
# hand-made pickles (for files torch itself would not write)


class FakeStorage:
    def __init__(self, key, stype, numel, location="cpu"):
        self.key, self.stype, self.numel, self.location = key, stype, numel, location


class FakeTensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce__(self):
        args = (self.storage, self.offset, tuple(self.size), tuple(self.stride), False, collections.OrderedDict())
        return (torch._utils._rebuild_tensor_v2, args)


class FakePickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, FakeStorage):
            return ("storage", obj.stype, obj.key, obj.location, obj.numel)
        return None


def fake_pickle(obj):
    buf = io.BytesIO()
    FakePickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def fake_torch_zip(name, sd, storages, prefix="archive", byteorder=b"little", compress=zipfile.ZIP_STORED):
    entries = [(f"{prefix}/data.pkl", fake_pickle(sd)), (f"{prefix}/byteorder", byteorder)]
    for key, data in storages.items():
        entries.append((f"{prefix}/data/{key}", data))
    entries.append((f"{prefix}/version", b"3\n"))
    write_zip(name, entries, compress)


class Evil:
    """Pickles as a call of `fn(*args)`; pickling only writes the global's name."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


# ----------------------------------------------------------------------------------------------


def main():
    global OUT
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="fixtures/weights")
    OUT = ap.parse_args().out
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    torch.set_num_threads(2)

    import timm
    import torchvision

    marker = os.path.abspath(path("PWNED"))
    EXPECTED["pwned_marker"] = "PWNED"

    # -- torchvision mobilenet_v2, as downloaded (zip), legacy, safetensors, fp16, bf16 --------
    _, v2 = seeded_state(lambda: torchvision.models.mobilenet_v2(weights=None))
    save_zip(v2, "tv_mobilenet_v2.pth")
    good("tv_mobilenet_v2.pth", "tv_mobilenet_v2", "TorchZip", v2)
    save_legacy(v2, "tv_mobilenet_v2_legacy.pth")
    good("tv_mobilenet_v2_legacy.pth", "tv_mobilenet_v2", "TorchLegacy")
    save_st(v2, "tv_mobilenet_v2.safetensors")
    good("tv_mobilenet_v2.safetensors", "tv_mobilenet_v2", "Safetensors")
    EXPECTED["arch"]["tv_mobilenet_v2.pth"] = ["mobilenet_v2", 1.0, 1000]
    fp16 = collections.OrderedDict((k, v.half() if v.is_floating_point() else v) for k, v in v2.items())
    save_zip(fp16, "tv_mobilenet_v2_fp16.pth")
    good("tv_mobilenet_v2_fp16.pth", "tv_mobilenet_v2_fp16", "TorchZip", fp16)
    save_st(fp16, "tv_mobilenet_v2_fp16.safetensors")
    good("tv_mobilenet_v2_fp16.safetensors", "tv_mobilenet_v2_fp16", "Safetensors")
    bf16 = collections.OrderedDict((k, v.bfloat16() if v.is_floating_point() else v) for k, v in v2.items())
    save_st(bf16, "tv_mobilenet_v2_bf16.safetensors")
    good("tv_mobilenet_v2_bf16.safetensors", "tv_mobilenet_v2_bf16", "Safetensors", bf16)

    # -- timm mobilenetv1_100 (model.safetensors as on the hub, and .pth / .bin) ----------------
    _, v1 = seeded_state(lambda: timm.create_model("mobilenetv1_100", pretrained=False))
    save_st(v1, "timm_mobilenetv1_100.safetensors")
    good("timm_mobilenetv1_100.safetensors", "timm_mobilenetv1_100", "Safetensors", v1)
    save_zip(v1, "timm_mobilenetv1_100.bin")
    good("timm_mobilenetv1_100.bin", "timm_mobilenetv1_100", "TorchZip")
    EXPECTED["arch"]["timm_mobilenetv1_100.safetensors"] = ["mobilenetv1_100", 1.0, 1000]

    # -- small models: wrapped checkpoints, DDP prefix, architecture detection ------------------
    small_model, small = seeded_state(lambda: torchvision.models.mobilenet_v2(weights=None, width_mult=0.5, num_classes=10))
    EXPECTED["states"]["tv_mobilenet_v2_050_c10"] = describe(small)
    save_zip(small, "tv_mobilenet_v2_050_c10.pt")
    good("tv_mobilenet_v2_050_c10.pt", "tv_mobilenet_v2_050_c10", "TorchZip")
    EXPECTED["arch"]["tv_mobilenet_v2_050_c10.pt"] = ["mobilenet_v2", 0.5, 10]
    opt = torch.optim.SGD(small_model.parameters(), lr=0.1, momentum=0.9)
    small_model.train()
    small_model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    save_zip({"state_dict": small}, "wrapped_state_dict.pth")
    good("wrapped_state_dict.pth", "tv_mobilenet_v2_050_c10", "TorchZip")
    save_zip({"model": small, "epoch": 3, "optimizer": opt.state_dict(), "best_acc1": 0.25, "arch": "mobilenet_v2"}, "wrapped_model.pth")
    good("wrapped_model.pth", "tv_mobilenet_v2_050_c10", "TorchZip")
    save_legacy({"model": small, "epoch": 3, "optimizer": opt.state_dict()}, "wrapped_model_legacy.pth")
    good("wrapped_model_legacy.pth", "tv_mobilenet_v2_050_c10", "TorchLegacy")
    save_zip({"epoch": 3, "model_state_dict": small, "optimizer_state_dict": opt.state_dict(), "loss": 1.5}, "wrapped_model_state_dict.pth")
    good("wrapped_model_state_dict.pth", "tv_mobilenet_v2_050_c10", "TorchZip")
    ddp = collections.OrderedDict(("module." + k, v) for k, v in small.items())
    save_zip(ddp, "ddp_module.pth")
    good("ddp_module.pth", "tv_mobilenet_v2_050_c10", "TorchZip")
    save_zip({"state_dict": ddp, "epoch": 1}, "ddp_wrapped.pth")
    good("ddp_wrapped.pth", "tv_mobilenet_v2_050_c10", "TorchZip")

    for arch, make, expect in [
        ("tv_mobilenet_v2_035_c10", lambda: torchvision.models.mobilenet_v2(weights=None, width_mult=0.35, num_classes=10), ["mobilenet_v2", 0.35, 10]),
        ("tv_mobilenet_v2_140_c10", lambda: torchvision.models.mobilenet_v2(weights=None, width_mult=1.4, num_classes=10), ["mobilenet_v2", 1.4, 10]),
        ("tv_mobilenet_v3_large_c10", lambda: torchvision.models.mobilenet_v3_large(weights=None, num_classes=10), ["mobilenet_v3_large", 1.0, 10]),
        ("tv_mobilenet_v3_small_c10", lambda: torchvision.models.mobilenet_v3_small(weights=None, num_classes=10), ["mobilenet_v3_small", 1.0, 10]),
        ("tv_mobilenet_v3_large_075_c10", lambda: torchvision.models.mobilenet_v3_large(weights=None, width_mult=0.75, num_classes=10), ["mobilenet_v3_large", 0.75, 10]),
        ("timm_mobilenetv1_125_c10", lambda: timm.create_model("mobilenetv1_125", pretrained=False, num_classes=10), ["mobilenetv1_125", 1.25, 10]),
        ("timm_mobilenetv1_100h_c10", lambda: timm.create_model("mobilenetv1_100h", pretrained=False, num_classes=10), ["mobilenetv1_100h", 1.0, 10]),
    ]:
        _, sd = seeded_state(make)
        sd = collections.OrderedDict((k, v.half() if v.is_floating_point() else v) for k, v in sd.items())
        save_st(sd, arch + ".safetensors")
        good(arch + ".safetensors", arch, "Safetensors", sd)
        EXPECTED["arch"][arch + ".safetensors"] = expect
    EXPECTED["arch"]["dtypes.pth"] = None

    # -- views sharing one storage --------------------------------------------------------------
    t = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    views = collections.OrderedDict(a=t, b=t[2:], c=t.t(), d=t[:, ::2], e=t[1, 1:5], f=t.reshape(-1)[5:17].reshape(3, 4))
    views["g"] = torch.tensor([1.5, -2.0])  # its own storage
    for k, v in views.items():
        assert k in "ag" or v.untyped_storage().data_ptr() == t.untyped_storage().data_ptr()
    save_zip(views, "views.pth")
    good("views.pth", "views", "TorchZip", views)
    save_legacy(views, "views_legacy.pth")
    good("views_legacy.pth", "views", "TorchLegacy")

    # -- one tensor of each dtype (zip, legacy, safetensors, big-endian zip) --------------------
    g = torch.Generator().manual_seed(1)
    dt = collections.OrderedDict()
    dt["float32"] = torch.randn(3, 4, generator=g)
    dt["float16"] = torch.randn(5, generator=g).half()
    dt["bfloat16"] = torch.randn(2, 3, generator=g).bfloat16()
    dt["float64"] = torch.randn(4, generator=g).double()
    dt["int64"] = torch.tensor([-(2**40), 0, 7, 2**62], dtype=torch.int64)
    dt["int32"] = torch.tensor([[-5, 6], [2**30, -(2**31)]], dtype=torch.int32)
    dt["int16"] = torch.tensor([-300, 300], dtype=torch.int16)
    dt["int8"] = torch.tensor([-128, 127, 0], dtype=torch.int8)
    dt["uint8"] = torch.tensor([0, 1, 254, 255], dtype=torch.uint8)
    dt["bool"] = torch.tensor([True, False, True])
    dt["scalar"] = torch.tensor(3.25)
    dt["empty"] = torch.zeros(0, 3)
    save_zip(dt, "dtypes.pth")
    good("dtypes.pth", "dtypes", "TorchZip", dt)
    save_legacy(dt, "dtypes_legacy.pth")
    good("dtypes_legacy.pth", "dtypes", "TorchLegacy")
    save_st(dt, "dtypes.safetensors")
    good("dtypes.safetensors", "dtypes", "Safetensors")
    # The same tensors as a big-endian machine writes them (byteorder "big", swapped storages).
    entries = []
    for n, d in zip_entries(torch_zip_bytes(dt)):
        if n.endswith("/byteorder"):
            d = b"big"
        elif "/data/" in n and not n.split("/")[-2].startswith("."):
            key = n.split("/")[-1]
            t_ = list(dt.values())[int(key)]
            size = t_.element_size()
            d = b"".join(d[i : i + size][::-1] for i in range(0, len(d), size))
        entries.append((n, d))
    write_zip("dtypes_bigendian.pth", entries)
    good("dtypes_bigendian.pth", "dtypes", "TorchZip")
    # Pickle protocol 4 (short strings, STACK_GLOBAL, MEMOIZE, FRAME) is read too.
    buf = io.BytesIO()
    torch.save(views, buf, pickle_protocol=4)
    with open(path("views_protocol4.pth"), "wb") as f:
        f.write(buf.getvalue())
    good("views_protocol4.pth", "views", "TorchZip")
    # A hand-made but valid archive with another top folder name (checked against torch.load).
    storage = torch.arange(10, dtype=torch.float32)
    st = FakeStorage("7", torch.FloatStorage, 10)
    fake_torch_zip("handmade.pth", {"w": FakeTensor(st, 2, (2, 3), (1, 2))}, {"7": tensor_bytes(storage)}, prefix="some_model-1234")
    hand = torch.load(path("handmade.pth"), weights_only=True)
    good("handmade.pth", "handmade", "TorchZip", hand)

    # nn.Parameters (torch._utils._rebuild_parameter) and a tensor with Python attributes
    # (torch._tensor._rebuild_from_type_v2) are plain tensors too.
    torch.manual_seed(2)
    lin = torch.nn.Linear(3, 2)
    params = collections.OrderedDict(lin.named_parameters())
    tagged = torch.arange(4, dtype=torch.float32)
    tagged.note = "python attribute"
    params["tagged"] = tagged
    save_zip(params, "parameters.pth")
    good("parameters.pth", "parameters", "TorchZip", params)
    save_legacy(params, "parameters_legacy.pth")
    good("parameters_legacy.pth", "parameters", "TorchLegacy")

    # -- refused: whole module pickles and malicious pickles -------------------------------------
    save_zip(small_model, "whole_model.pth")
    bad("whole_model.pth", "torchvision.models.mobilenetv2.MobileNetV2")
    save_legacy(small_model, "whole_model_legacy.pth")
    bad("whole_model_legacy.pth", "torchvision.models.mobilenetv2.MobileNetV2")
    evil_sys = Evil(os.system, f"touch {marker}")
    data = torch_zip_bytes({"a": torch.ones(2)})
    ents = zip_entries(data)
    prefix = ents[0][0].split("/")[0]

    def replace_pkl(name, pkl):
        write_zip(name, [(n, pkl if n == f"{prefix}/data.pkl" else d) for n, d in ents])

    replace_pkl("mal_os_system.pth", pickle.dumps({"a": evil_sys}, protocol=2))
    bad("mal_os_system.pth", "refused global", "system")
    import builtins

    replace_pkl("mal_eval.pth", pickle.dumps(Evil(builtins.eval, f"__import__('os').system('touch {marker}')"), protocol=2))
    bad("mal_eval.pth", "builtins.eval")
    import subprocess

    replace_pkl("mal_subprocess.pth", pickle.dumps(collections.OrderedDict(x=Evil(subprocess.Popen, ["touch", marker])), protocol=4))
    bad("mal_subprocess.pth", "subprocess.Popen")
    # A malicious global after valid tensors: still refused, nothing half-loaded.
    legacy = legacy_bytes({"a": torch.ones(2)})
    magic_end = 2 + 1 + 1 + 10 + 1  # PROTO 2, LONG1 10 bytes, STOP
    head = io.BytesIO(legacy)
    for _ in range(3):
        pickle.load(head)
    pos = head.tell()
    with open(path("mal_legacy_os_system.pth"), "wb") as f:
        f.write(legacy[:pos] + pickle.dumps(evil_sys, protocol=2) + pickle.dumps([], protocol=2))
    assert magic_end <= pos
    bad("mal_legacy_os_system.pth", "refused global", "system")
    with open(path("mal_raw.pkl"), "wb") as f:
        f.write(pickle.dumps(evil_sys, protocol=2))
    bad("mal_raw.pkl", "not a recognised weight file")

    # -- bad inputs ------------------------------------------------------------------------------
    open(path("empty.pth"), "wb").close()
    bad("empty.pth", "empty")
    with open(path("wrong_magic.pth"), "wb") as f:
        f.write(b"this is not a checkpoint, just some text\n" * 4)
    bad("wrong_magic.pth", "not a recognised weight file")
    zbytes = torch_zip_bytes(dt)
    with open(path("truncated_zip.pth"), "wb") as f:
        f.write(zbytes[: len(zbytes) // 2])
    bad("truncated_zip.pth", "zip")
    lbytes = legacy_bytes(dt)
    with open(path("truncated_legacy.pth"), "wb") as f:
        f.write(lbytes[: len(lbytes) - 7])
    bad("truncated_legacy.pth", "truncated")
    with open(path("truncated_legacy_pickle.pth"), "wb") as f:
        f.write(lbytes[:300])
    bad("truncated_legacy_pickle.pth", "pickle")
    with open(path("truncated_safetensors.safetensors"), "wb") as f:
        b = open(path("dtypes.safetensors"), "rb").read()
        f.write(b[: len(b) - 5])
    bad("truncated_safetensors.safetensors", "safetensors")

    # Flipped bytes inside data.pkl and inside a storage (the zip's CRC-32 catches both).
    def flip_in_entry(src, name, entry_suffix, at):
        raw = bytearray(src)
        z = zipfile.ZipFile(io.BytesIO(src))
        for info in z.infolist():
            if info.filename.endswith(entry_suffix):
                hdr = info.header_offset
                nlen = int.from_bytes(raw[hdr + 26 : hdr + 28], "little")
                elen = int.from_bytes(raw[hdr + 28 : hdr + 30], "little")
                start = hdr + 30 + nlen + elen
                raw[start + at] ^= 0x5A
        with open(path(name), "wb") as f:
            f.write(bytes(raw))

    flip_in_entry(zbytes, "corrupt_pkl.pth", "/data.pkl", 40)
    bad("corrupt_pkl.pth", "CRC")
    flip_in_entry(zbytes, "corrupt_storage.pth", "/data/0", 3)
    bad("corrupt_storage.pth", "CRC")

    def rebuild(name, edit_pkl=None, edit=None):
        out = []
        for n, d in zip_entries(zbytes):
            if n.endswith("/data.pkl") and edit_pkl:
                d = edit_pkl(d)
            if edit:
                n, d = edit(n, d)
            if n is not None:
                out.append((n, d))
        write_zip(name, out)

    rebuild("unknown_opcode.pth", lambda p: p[:2] + b"\xfe" + p[2:])
    bad("unknown_opcode.pth", "opcode 0xfe")
    rebuild("bad_byteorder.pth", edit=lambda n, d: (n, b"middle") if n.endswith("/byteorder") else (n, d))
    bad("bad_byteorder.pth", "byteorder")
    rebuild("missing_storage.pth", edit=lambda n, d: (None, d) if n.endswith("/data/3") else (n, d))
    bad("missing_storage.pth", "data/3")
    rebuild("missing_data_pkl.pth", edit=lambda n, d: (n.replace("data.pkl", "other.pkl"), d))
    bad("missing_data_pkl.pth", "data.pkl")
    write_zip("compressed.pth", zip_entries(zbytes), compress=zipfile.ZIP_DEFLATED)
    bad("compressed.pth", "compressed")
    # Not a state dict at all.
    save_zip([torch.ones(2), torch.zeros(3)], "not_a_dict.pth")
    bad("not_a_dict.pth", "state dict")
    save_zip({"epoch": 3, "lr": 0.1}, "no_tensors.pth")
    bad("no_tensors.pth", "state dict")

    st10 = FakeStorage("0", torch.FloatStorage, 10)
    data10 = tensor_bytes(torch.arange(10, dtype=torch.float32))
    fake_torch_zip("storage_offset_oob.pth", {"w": FakeTensor(st10, 12, (2,), (1,))}, {"0": data10})
    bad("storage_offset_oob.pth", "w", "storage")
    fake_torch_zip("storage_size_oob.pth", {"w": FakeTensor(FakeStorage("0", torch.FloatStorage, 1000), 0, (2,), (1,))}, {"0": data10})
    bad("storage_size_oob.pth", "data/0", "bytes")
    fake_torch_zip("shape_too_big.pth", {"w": FakeTensor(st10, 0, (4, 3), (3, 1))}, {"0": data10})
    bad("shape_too_big.pth", "w", "[4, 3]")
    fake_torch_zip("stride_too_big.pth", {"w": FakeTensor(st10, 1, (2, 2), (8, 1))}, {"0": data10})
    bad("stride_too_big.pth", "w", "storage")
    fake_torch_zip("negative_offset.pth", {"w": FakeTensor(st10, -1, (2,), (1,))}, {"0": data10})
    bad("negative_offset.pth", "w", "offset")
    fake_torch_zip("negative_shape.pth", {"w": FakeTensor(st10, 0, (-2, 3), (3, 1))}, {"0": data10})
    bad("negative_shape.pth", "w", "shape")
    fake_torch_zip("huge_shape.pth", {"w": FakeTensor(st10, 0, (2**40, 2**40), (0, 0))}, {"0": data10})
    bad("huge_shape.pth", "w")
    fake_torch_zip("bad_bool.pth", {"w": FakeTensor(FakeStorage("0", torch.BoolStorage, 3), 0, (3,), (1,))}, {"0": b"\x01\x02\x00"})
    bad("bad_bool.pth", "bool")
    fake_torch_zip("unsupported_storage.pth", {"w": FakeTensor(FakeStorage("0", torch.ComplexFloatStorage, 1), 0, (1,), (1,))}, {"0": b"\0" * 8})
    bad("unsupported_storage.pth", "ComplexFloatStorage")
    fake_torch_zip("int_key.pth", {3: FakeTensor(st10, 0, (2,), (1,))}, {"0": data10})
    bad("int_key.pth", "key")
    # Legacy: the 8-byte element count before a storage disagrees with the pickle.
    lb = bytearray(legacy_bytes({"a": torch.ones(2)}))
    count_at = len(lb) - 8 - 8
    assert lb[count_at : count_at + 8] == (2).to_bytes(8, "little")
    lb[count_at] = 3
    with open(path("legacy_bad_count.pth"), "wb") as f:
        f.write(bytes(lb))
    bad("legacy_bad_count.pth", "element count")
    # safetensors: header length past the end, offsets past the end, shape/size disagreement.
    def st_file(name, header, data):
        h = json.dumps(header).encode()
        with open(path(name), "wb") as f:
            f.write(len(h).to_bytes(8, "little") + h + data)

    st_file("st_offsets_oob.safetensors", {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8)
    bad("st_offsets_oob.safetensors", "w")
    st_file("st_shape_mismatch.safetensors", {"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}, b"\0" * 16)
    bad("st_shape_mismatch.safetensors", "w", "[3]")
    st_file("st_bad_dtype.safetensors", {"w": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8)
    bad("st_bad_dtype.safetensors", "C64")
    with open(path("st_header_oob.safetensors"), "wb") as f:
        f.write((1 << 40).to_bytes(8, "little") + b'{"w":')
    bad("st_header_oob.safetensors", "header")

    EXPECTED["seed"] = 0
    EXPECTED["torch"] = torch.__version__
    with open(path("expected.json"), "w") as f:
        json.dump(EXPECTED, f, indent=1)
    assert not os.path.exists(marker)
    total = sum(os.path.getsize(path(n)) for n in os.listdir(OUT))
    print(f"wrote {len(os.listdir(OUT))} files ({total / 1e6:.1f} MB) to {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
