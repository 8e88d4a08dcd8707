"""Training and sampling speed of cadvlm's VLM against the same model in PyTorch eager, on the same CPU.

The PyTorch side re-implements `src/model/{vision,text,layers,vlm}.rs` op for op (ViT with learned
positions and pre-norm LayerNorm blocks, GELU MLPs; 2x2 merger MLP; Qwen2-like decoder with RMSNorm,
RoPE, GQA via expand+reshape, q/k/v biases, SwiGLU; prefix-LM additive mask; `image_cond` and
`aux_head`), the SFT loss of `Vlm::sft_loss` (log_softmax over the vocabulary, gather, masked mean),
and the optimiser of `src/train/optim.rs` (global-norm clip 1.0, AdamW betas 0.9/0.95, eps 1e-8,
weight decay 0.01 on >= 2-D parameters only). Parameter counts of both sides are printed and must be
equal. Our side is the `cadvlm bench-train` / `cadvlm bench-sample` binary, run in the same process
tree right after the PyTorch measurement of the same setting, with the same thread count
(RAYON_NUM_THREADS for ours, torch.set_num_threads for PyTorch).

PyTorch is a benchmark reference only; the project does not depend on it.
Run through benches/train_vs_pytorch.sh, which makes the venv and builds the binary.
"""

import argparse
import math
import os
import re
import subprocess
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# (image, patch, v_hidden, v_layers, v_heads, hidden, layers, heads, kv_heads, inter, max_seq):
# VlmConfig::named in src/model/config.rs
SIZES = {
    "tiny": (32, 8, 32, 1, 2, 64, 2, 4, 2, 128, 512),
    "mini": (64, 8, 64, 2, 2, 128, 3, 4, 2, 384, 640),
    "small": (128, 16, 128, 2, 4, 192, 4, 6, 2, 512, 768),
    "medium": (224, 16, 256, 4, 4, 384, 8, 6, 2, 1024, 1024),
    "base": (224, 14, 384, 6, 6, 768, 12, 12, 4, 2048, 1024),
}
AUX_OUTPUTS = 8
MERGE = 2


class Cfg:
    def __init__(self, size, vocab):
        s = SIZES[size]
        (self.image_size, self.patch_size, self.vision_hidden, self.vision_layers, self.vision_heads,
         self.hidden, self.layers, self.heads, self.kv_heads, self.intermediate, self.max_seq_len) = s
        self.vision_mlp = 4 * self.vision_hidden
        self.vocab = vocab
        self.grid = self.image_size // self.patch_size
        self.n_patches = self.grid * self.grid
        self.n_image_tokens = (self.grid // MERGE) ** 2
        self.patch_dim = 3 * self.patch_size ** 2
        self.head_dim = self.hidden // self.heads
        self.rope_theta = 10000.0
        self.rms_eps = 1e-6


def linear(d_in, d_out, bias, scale=1.0):
    """`LoraLinear::new_scaled`: W ~ N(0, scale^2 / in) as [out, in], zero bias."""
    l = nn.Linear(d_in, d_out, bias=bias)
    with torch.no_grad():
        l.weight.normal_(0.0, scale * math.sqrt(1.0 / d_in))
        if bias:
            l.bias.zero_()
    return l


class LayerNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, 1e-6)


class RmsNorm(nn.Module):
    """Qwen2RMSNorm: x / sqrt(mean(x^2) + eps) * w (as layers.rs)."""

    def __init__(self, d, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(start, length, head_dim, theta):
    inv = theta ** (-(torch.arange(0, head_dim, 2, dtype=torch.float64)) / head_dim)  # [half]
    a = torch.arange(start, start + length, dtype=torch.float64)[:, None] * inv[None, :]
    a = torch.cat([a, a], dim=1)  # [len, head_dim], halves repeated (HF)
    return a.cos().float(), a.sin().float()


def apply_rope(x, cos, sin):
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rot * sin


def attention(q, k, v, bias):
    """q: [b, h, tq, d]; k, v: [b, kvh, tk, d]; repeat_kv by expand + reshape (HF), additive bias."""
    b, h, _, d = q.shape
    kvh, tk = k.shape[1], k.shape[2]
    if kvh != h:
        rep = h // kvh
        k = k[:, :, None].expand(b, kvh, rep, tk, d).reshape(b, h, tk, d)
        v = v[:, :, None].expand(b, kvh, rep, tk, d).reshape(b, h, tk, d)
    s = torch.matmul(q, k.transpose(2, 3)) * (1.0 / math.sqrt(d))
    if bias is not None:
        s = s + bias
    return torch.matmul(torch.softmax(s, dim=-1), v)


def prefix_causal_bias(tq, tk, prefix):
    """Causal, except the first `prefix` keys (the image) are visible to every query; -1e9 else."""
    qi = torch.arange(tk - tq, tk)[:, None]
    j = torch.arange(tk)[None, :]
    return torch.where((j > qi) & (j >= prefix), -1e9, 0.0).float()


class VisionBlock(nn.Module):
    def __init__(self, c, res):
        super().__init__()
        vh = c.vision_hidden
        self.heads = c.vision_heads
        self.norm1 = LayerNorm(vh)
        self.qkv = linear(vh, 3 * vh, True)
        self.proj = linear(vh, vh, True, res)
        self.norm2 = LayerNorm(vh)
        self.fc1 = linear(vh, c.vision_mlp, True)
        self.fc2 = linear(c.vision_mlp, vh, True, res)

    def forward(self, x):
        b, n, vh = x.shape
        hd = vh // self.heads
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, hd)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # [b, heads, n, hd]
        o = attention(q, k, v, None)
        x = x + self.proj(o.transpose(1, 2).reshape(b, n, vh))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class DecoderLayer(nn.Module):
    def __init__(self, c, res):
        super().__init__()
        h, hd = c.hidden, c.head_dim
        self.heads, self.kv_heads, self.hd = c.heads, c.kv_heads, hd
        self.input_layernorm = RmsNorm(h, c.rms_eps)
        self.q_proj = linear(h, c.heads * hd, True)
        self.k_proj = linear(h, c.kv_heads * hd, True)
        self.v_proj = linear(h, c.kv_heads * hd, True)
        self.o_proj = linear(c.heads * hd, h, False, res)
        self.post_attention_layernorm = RmsNorm(h, c.rms_eps)
        self.gate_proj = linear(h, c.intermediate, False)
        self.up_proj = linear(h, c.intermediate, False)
        self.down_proj = linear(c.intermediate, h, False, res)

    def forward(self, x, cos, sin, bias, cache, i):
        b, t, _ = x.shape
        hx = self.input_layernorm(x)
        q = self.q_proj(hx).reshape(b, t, self.heads, self.hd).transpose(1, 2)
        k = self.k_proj(hx).reshape(b, t, self.kv_heads, self.hd).transpose(1, 2)
        v = self.v_proj(hx).reshape(b, t, self.kv_heads, self.hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            if len(cache["layers"]) == i:
                cache["layers"].append((k, v))
            else:
                pk, pv = cache["layers"][i]
                k, v = torch.cat([pk, k], 2), torch.cat([pv, v], 2)  # as text.rs: cat per step
                cache["layers"][i] = (k, v)
        o = attention(q, k, v, bias)
        x = x + self.o_proj(o.transpose(1, 2).reshape(b, t, self.heads * self.hd))
        hm = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(hm)) * self.up_proj(hm))


class Vlm(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        vres = 1.0 / math.sqrt(2.0 * max(c.vision_layers, 1))
        vh, m2 = c.vision_hidden, MERGE * MERGE
        self.patch_embed = linear(c.patch_dim, vh, True)
        self.pos_embed = nn.Parameter(torch.randn(c.n_patches, vh) * 0.02)
        self.blocks = nn.ModuleList([VisionBlock(c, vres) for _ in range(c.vision_layers)])
        self.ln_q = LayerNorm(vh)
        self.merger_fc1 = linear(m2 * vh, m2 * vh, True)
        self.merger_fc2 = linear(m2 * vh, c.hidden, True)
        tres = 1.0 / math.sqrt(2.0 * c.layers)
        self.embed_tokens = nn.Parameter(torch.randn(c.vocab, c.hidden) * 0.02)
        self.layers = nn.ModuleList([DecoderLayer(c, tres) for _ in range(c.layers)])
        self.norm = RmsNorm(c.hidden, c.rms_eps)
        self.lm_head = linear(c.hidden, c.vocab, False)
        self.image_cond = linear(c.hidden, c.hidden, True, 0.0)
        self.aux_head = linear(c.hidden, AUX_OUTPUTS, True)

    def encode_image(self, patches):
        x = self.patch_embed(patches) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        b, n, vh = x.shape
        x = self.ln_q(x).reshape(b, n // 4, 4 * vh)
        return self.merger_fc2(F.gelu(self.merger_fc1(x)))  # [b, n_image_tokens, hidden]

    def image_condition(self, image):
        return self.image_cond(image.mean(1, keepdim=True))  # [b, 1, hidden]

    def decoder(self, x, bias, cache=None):
        t = x.shape[1]
        start = cache["len"] if cache is not None else 0
        cos, sin = rope_tables(start, t, self.c.head_dim, self.c.rope_theta)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, bias, cache, i)
        if cache is not None:
            cache["len"] += t
        return self.norm(x)

    def sft_loss(self, patches, ids, mask):
        return self.text_loss(self.encode_image(patches), ids, mask)

    def text_loss(self, image, ids, mask):
        """Vlm::sft_losses without aux targets after the image encoding: the aux head is evaluated
        (as ours does) but unused; mean NLL of the masked targets, log_softmax over the vocabulary."""
        n = self.c.n_image_tokens
        _aux = self.aux_head(image.mean(1, keepdim=True))
        t = ids.shape[1]
        cond = self.image_condition(image)
        x = torch.cat([image, F.embedding(ids, self.embed_tokens) + cond], 1)
        bias = prefix_causal_bias(n + t, n + t, n)
        h = self.decoder(x, bias)[:, n:n + t - 1]  # the states that predict ids[:, 1:]
        logp = F.log_softmax(self.lm_head(h), dim=2)
        lp = logp.gather(2, ids[:, 1:, None])[..., 0]
        return -(lp * mask).sum() / max(float(mask.sum()), 1.0)

    def step(self, x, cache, prefix):
        """Vlm::step: the next-token logits [b, vocab] at the last position."""
        t = x.shape[1]
        bias = prefix_causal_bias(t, cache["len"] + t, prefix) if t > 1 else None
        h = self.decoder(x, bias, cache)
        return self.lm_head(h[:, -1])


class AdamW:
    """src/train/optim.rs: global grad-norm clip, AdamW with decay on >= 2-D params only."""

    def __init__(self, params, lr, wd=0.01, betas=(0.9, 0.95), eps=1e-8, clip=1.0):
        params = list(params)
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        self.params, self.clip = params, clip
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
            lr=lr, betas=betas, eps=eps)

    def step(self):
        torch.nn.utils.clip_grad_norm_([p for p in self.params if p.grad is not None], self.clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def token_rows(batch, seq, vocab):
    """bench_train.rs: rows ([1, 2], seq - 2 code tokens); targets are the code tokens."""
    ids = torch.tensor([[1, 2] + [(i * 7 + r * 13) % (vocab - 4) + 4 for i in range(seq - 2)]
                        for r in range(batch)])
    mask = torch.zeros(batch, seq - 1)
    mask[:, 1:] = 1.0  # targets ids[t] for t >= 2
    return ids, mask


def torch_train(size, batch, seq, vocab, steps, profile):
    c = Cfg(size, vocab)
    torch.manual_seed(0)
    m = Vlm(c)
    opt = AdamW(m.parameters(), lr=1e-4)
    ids, mask = token_rows(batch, seq, vocab)
    phases = {k: 0.0 for k in ("vision", "decoder+loss", "backward", "optimizer")}
    timed = 0.0
    for s in range(steps + 1):
        t0 = time.perf_counter()
        patches = torch.randn(batch, c.n_patches, c.patch_dim)
        if profile:
            ta = time.perf_counter()
            image = m.encode_image(patches)
            tb = time.perf_counter()
            loss = m.text_loss(image, ids, mask)
            tc = time.perf_counter()
        else:
            loss = m.sft_loss(patches, ids, mask)
        loss.backward()
        td = time.perf_counter()
        opt.step()
        te = time.perf_counter()
        if s > 0:
            timed += te - t0
            if profile:
                phases["vision"] += tb - ta
                phases["decoder+loss"] += tc - tb
                phases["backward"] += td - tc
                phases["optimizer"] += te - td
    tok = steps * int(mask.sum())
    return tok / timed, n_params(m), {k: 1e3 * v / steps for k, v in phases.items()}


@torch.inference_mode()
def torch_sample(size, batch, prompt, new_tokens, vocab, reps):
    """Greedy decoding of exactly `new_tokens` per row with the KV cache, timed from the patches
    to the last token (image encoding and prefill included), best of `reps` after one warm-up, as
    `cadvlm bench-sample`."""
    c = Cfg(size, vocab)
    torch.manual_seed(0)
    m = Vlm(c).eval()
    prefix = torch.tensor([[4 + i % (vocab - 4) for i in range(prompt)]] * batch)
    best = math.inf
    for rep in range(reps + 1):
        patches = torch.randn(batch, c.n_patches, c.patch_dim)
        t0 = time.perf_counter()
        image = m.encode_image(patches)
        cond = m.image_condition(image)
        x = torch.cat([image, F.embedding(prefix, m.embed_tokens) + cond], 1)
        cache = {"layers": [], "len": 0}
        logits = m.step(x, cache, c.n_image_tokens)
        out = []
        while True:
            nxt = logits.argmax(-1)  # [b]
            out.append(nxt)
            if len(out) == new_tokens:
                break
            logits = m.step(F.embedding(nxt[:, None], m.embed_tokens) + cond, cache, c.n_image_tokens)
        dt = time.perf_counter() - t0
        assert cache["len"] == c.n_image_tokens + prompt + new_tokens - 1
        if rep > 0:
            best = min(best, dt)
    return batch * new_tokens / best, n_params(m)


def run_ours(binary, args, threads):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    r = subprocess.run([binary] + args, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"{binary} {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r.stdout.strip()


def parse_float(pat, text, what):
    mm = re.search(pat, text)
    if not mm:
        sys.exit(f"cannot find {what} in:\n{text}")
    return float(mm.group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    tgt = os.environ.get("CARGO_TARGET_DIR", "target")
    ap.add_argument("--bin", default=os.environ.get("CADVLM_BIN", os.path.join(tgt, "release", "cadvlm")))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--sizes", default="small,base")
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--backends", default="flex,ndarray", help="our training backends to run")
    ap.add_argument("--repeats", type=int, default=1, help="alternate ours/PyTorch this often; best kept")
    # per size: batch, seq, timed steps (after one warm-up) for training; new tokens for sampling
    ap.add_argument("--small-train", default="8,256,5")
    ap.add_argument("--base-train", default="2,128,2")
    # per size: new tokens per row, timed repetitions (after one warm-up, best kept) for sampling
    ap.add_argument("--small-sample", default="128,3")
    ap.add_argument("--base-sample", default="32,1")
    ap.add_argument("--sample-batches", default="1,16,64")
    ap.add_argument("--prompt", type=int, default=8)
    ap.add_argument("--no-sample", action="store_true")
    ap.add_argument("--profile", action="store_true", help="per-phase ms of one training step, both sides")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    print(f"# torch {torch.__version__}, {a.threads} threads; ours: {a.bin}", flush=True)
    has_sample = "bench-sample" in run_ours(a.bin, ["--help"], a.threads)
    rows = []

    def row(size, what, ours, theirs, note=""):
        rows.append((size, what, ours, theirs, note))  # noqa
        print(f"  {size} {what}: ours {ours:.1f} tok/s, PyTorch {theirs:.1f} tok/s, ratio {ours / theirs:.2f} {note}",
              flush=True)

    for size in a.sizes.split(","):
        batch, seq, steps = (int(x) for x in getattr(a, f"{size}_train", a.small_train).split(","))
        for backend in a.backends.split(","):
            best_o = best_t = 0.0
            for _ in range(a.repeats):
                tt, tp, ph = torch_train(size, batch, seq, a.vocab, steps, a.profile)
                cmd = ["bench-train", "--size", size, "--backend", backend, "--batch", str(batch),
                       "--seq", str(seq), "--vocab", str(a.vocab), "--steps", str(steps)]
                out = run_ours(a.bin, cmd + (["--profile"] if a.profile else []), a.threads)
                op = int(parse_float(r"params (\d+)", out, "parameter count"))
                print(f"  params: ours {op}, PyTorch {tp}", flush=True)
                assert op == tp, f"parameter counts differ: ours {op}, PyTorch {tp}"
                if a.profile:
                    print("  PyTorch phases (ms/step): " + ", ".join(f"{k} {v:.0f}" for k, v in ph.items()))
                    print("  ours: " + out.replace("\n", "\n  ours: "))
                best_o = max(best_o, parse_float(r"([\d.]+) target tokens/s", out, "tokens/s"))
                best_t = max(best_t, tt)
            row(size, f"train {backend} b{batch} s{seq}", best_o, best_t)
        if a.no_sample:
            continue
        if not has_sample:
            print("  (this cadvlm has no bench-sample: sampling skipped)")
            continue
        new, reps = (int(x) for x in getattr(a, f"{size}_sample", a.small_sample).split(","))
        for b in (int(x) for x in a.sample_batches.split(",")):
            best_o = best_t = 0.0
            for _ in range(a.repeats):
                tt, tp = torch_sample(size, b, a.prompt, new, a.vocab, reps)
                out = run_ours(a.bin, ["bench-sample", "--size", size, "--backend", "flex", "--batch", str(b),
                                       "--prompt", str(a.prompt), "--new-tokens", str(new), "--vocab",
                                       str(a.vocab), "--threads", str(a.threads), "--reps", str(reps)],
                               a.threads)
                best_o = max(best_o, parse_float(r"([\d.]+) tokens/s", out, "tokens/s"))
                best_t = max(best_t, tt)
            row(size, f"sample flex b{b} p{a.prompt} n{new}", best_o, best_t)

    print()
    print(f"| size | what | ours tok/s | PyTorch tok/s | ours/PyTorch |")
    print(f"|---|---|---:|---:|---:|")
    for size, what, o, t, _ in rows:
        print(f"| {size} | {what} | {o:.1f} | {t:.1f} | {o / t:.2f} |")


if __name__ == "__main__":
    main()
