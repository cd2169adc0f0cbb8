"""Triton kernels of :mod:`ride.kernels.triton_slstm` (imported only where they run: Triton is
optional, and importing it costs every `ride` command time)."""
import triton
import triton.language as tl


@triton.jit
def _sig(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    # tanh via the logistic function (exact identity); stable for large |x|
    return 2.0 / (1.0 + tl.exp(-2.0 * x)) - 1.0


# Scalars that change from diagonal to diagonal are not specialised (Triton would compile a variant
# for each value class, ==1 or divisible by 16, of each of them: dozens of compiles per patch size).
@triton.jit(do_not_specialize=["total", "lo", "off", "noff", "nlo", "nhi"])
def fwd(z_ptr, c_ptr, h_ptr, crec_ptr, rec_ptr,
        total, N, H: tl.constexpr, lo, off,
        crec_sp, crec_sn, rec_sp, rec_sn, rec_col,
        noff, nlo, nhi, BLOCK: tl.constexpr):
    e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = e < total
    j = e % H
    qn = e // H  # row-in-diagonal * N + image
    q = qn // N
    n = qn % N
    zb = z_ptr + qn * (5 * H) + j
    g = _tanh(tl.load(zb, mask=m))
    o = _sig(tl.load(zb + H, mask=m))
    i = _sig(tl.load(zb + 2 * H, mask=m))
    fc = _sig(tl.load(zb + 3 * H, mask=m))
    fr = _sig(tl.load(zb + 4 * H, mask=m))
    tl.store(zb, g, mask=m)
    tl.store(zb + H, o, mask=m)
    tl.store(zb + 2 * H, i, mask=m)
    tl.store(zb + 3 * H, fc, mask=m)
    tl.store(zb + 4 * H, fr, mask=m)
    cb = crec_ptr + (off + q) * crec_sp + n * crec_sn + j
    c = g * i + tl.load(cb, mask=m) * fc + tl.load(cb + H, mask=m) * fr
    t = _tanh(c * o)
    tl.store(c_ptr + qn * H + j, c, mask=m)
    tl.store(h_ptr + qn * H + j, t, mask=m)
    # Next diagonal: its row r reads h_left / c_left from this row r, h_up / c_up from row r - 1.
    # After the last diagonal the caller passes the empty span nlo = 1 > nhi = 0.
    r = lo + q
    left = m & (r >= nlo) & (r <= nhi)
    pl = noff + r - nlo
    tl.store(rec_ptr + pl * rec_sp + n * rec_sn + rec_col + j, t, mask=left)
    tl.store(crec_ptr + pl * crec_sp + n * crec_sn + j, c, mask=left)
    up = m & (r + 1 >= nlo) & (r + 1 <= nhi)
    pu = noff + r + 1 - nlo
    tl.store(rec_ptr + pu * rec_sp + n * rec_sn + rec_col + H + j, t, mask=up)
    tl.store(crec_ptr + pu * crec_sp + n * crec_sn + H + j, c, mask=up)


@triton.jit(do_not_specialize=["total", "lo", "hi", "off", "poff", "plo", "phi"])
def bwd(gates_ptr, c_ptr, h_ptr, gh_ptr, dz_ptr, dri_ptr, dro_ptr, dci_ptr, dco_ptr,
        total, N, H: tl.constexpr, KREC: tl.constexpr, lo, hi, off,
        poff, plo, phi, EXT: tl.constexpr, BLOCK: tl.constexpr):
    e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = e < total
    j = e % H
    qn = e // H
    q = qn // N
    n = qn % N
    r = lo + q
    gb = gates_ptr + (off * N + qn) * (5 * H) + j
    g = tl.load(gb, mask=m)
    o = tl.load(gb + H, mask=m)
    i = tl.load(gb + 2 * H, mask=m)
    fc = tl.load(gb + 3 * H, mask=m)
    fr = tl.load(gb + 4 * H, mask=m)
    sb = (off * N + qn) * H + j
    t = tl.load(h_ptr + sb, mask=m)
    c = tl.load(c_ptr + sb, mask=m)
    # Row r of the buffers written by the next diagonal: its pixel right of this one reads
    # our h as h_left (columns 0..H); the one below, at row r + 1, as h_up (H..2H).
    row = dri_ptr + (r * N + n) * KREC + j
    below = dri_ptr + ((r + 1) * N + n) * KREC + j
    dh = tl.load(gh_ptr + sb, mask=m) + tl.load(row, mask=m) + tl.load(below + H, mask=m)
    dcrow = dci_ptr + (r * N + n) * (2 * H) + j
    dcbelow = dci_ptr + ((r + 1) * N + n) * (2 * H) + j
    dc = tl.load(dcrow, mask=m) + tl.load(dcbelow + H, mask=m)
    if EXT:
        dc += tl.load(row + 2 * H, mask=m) + tl.load(below + 3 * H, mask=m)
    dm = dh * (1.0 - t * t)
    dc += dm * o
    # c_left: the previous diagonal's row r; c_up: its row r - 1 (zero outside its span; before
    # the first diagonal the caller passes the empty span plo = 1 > phi = 0).
    okl = m & (r >= plo) & (r <= phi)
    cl = tl.load(c_ptr + ((poff + r - plo) * N + n) * H + j, mask=okl, other=0.0)
    oku = m & (r - 1 >= plo) & (r - 1 <= phi)
    cu = tl.load(c_ptr + ((poff + r - 1 - plo) * N + n) * H + j, mask=oku, other=0.0)
    dcout = dco_ptr + (r * N + n) * (2 * H) + j
    tl.store(dcout, dc * fc, mask=m)
    tl.store(dcout + H, dc * fr, mask=m)
    zb = dz_ptr + qn * (5 * H) + j
    tl.store(zb, dc * i * (1.0 - g * g), mask=m)
    tl.store(zb + H, dm * c * o * (1.0 - o), mask=m)
    tl.store(zb + 2 * H, dc * g * i * (1.0 - i), mask=m)
    tl.store(zb + 3 * H, dc * cl * fc * (1.0 - fc), mask=m)
    tl.store(zb + 4 * H, dc * cu * fr * (1.0 - fr), mask=m)
    # Rows lo - 1 and hi + 1 of the output buffers lie outside this diagonal but are read by
    # the previous one: zero them (the GEMM fills rows lo..hi of the recurrent gradient).
    zero = tl.zeros([BLOCK], dtype=g.dtype)
    first = m & (q == 0) & (r > 0)  # r = lo here; tensors only (Triton's interpreter)
    last = m & (r == hi)
    for k in tl.static_range(2):
        tl.store(dco_ptr + ((lo - 1) * N + n) * (2 * H) + k * H + j, zero, mask=first)
        tl.store(dco_ptr + ((hi + 1) * N + n) * (2 * H) + k * H + j, zero, mask=last)
    for k in tl.static_range(KREC // H):
        tl.store(dro_ptr + ((lo - 1) * N + n) * KREC + k * H + j, zero, mask=first)
        tl.store(dro_ptr + ((hi + 1) * N + n) * KREC + k * H + j, zero, mask=last)
