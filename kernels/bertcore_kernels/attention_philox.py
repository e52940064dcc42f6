"""Attention dropout's random numbers: eight keep-decisions per Philox call.

Philox-4x32 yields four 32-bit words per evaluation; `tl.rand` keeps one and throws
three away. Here each word is split into two 16-bit halves, so one call decides eight
keys of one score row. Within each block of 32 keys, call c (c < 4) decides keys

    8 j + 2 c + k:   half k (0: high, 1: low) of word j (j < 4),

with the counter (c0, c1) of (batch b, head h)

    c0 = row * G + 4 * (key // 32) + c,   c1 = b * H + h,   G = 4 * ceil(L / 32),  L = max_seqlen.

A key is kept iff its half >= round(p * 2**16). That placement is the forward's: a
thread of Hopper's (and Ampere's) MMA accumulator tile holds, in each row, the key
pairs 2 c, 2 c + 1 of every 8, so every thread draws its own keys and the keep-mask
needs no trip through shared memory to meet the probabilities. Compiled for sm_90
(`tests/kernels/compile_for_gpu.py --ptx-counts`; not yet timed on a GPU), against
four 32-bit decisions per call in key order: the PTX that dropout adds to the forward
fell from 425 to 203 instructions and its registers from 221 to 167; the backward's
transposed tiles still shuffle the mask, 861 to 759 instructions, but with 17
barriers where it had 11. fp32 inputs without TF32 (`_dot_precision` "ieee": no tensor
cores, scores in a plain blocked layout) now convert the mask three times, where the
key-order draws needed none; 16-bit inputs convert it none, at every head dim. Both
counter words fit 32 bits (c0 < L**2 / 8 + 4 L), so no per-element counter
arithmetic runs in 64 bits. The forward, both backward kernels,
`_keep_bits_kernel` and `_dropout_mask_kernel` all go through this placement, with
tiles of 16 keys or more that start on a multiple of their width, so they agree bit
for bit and the backward can redraw the forward's mask rather than keep it.

Sixteen bits per decision, as the CPU path's fifteen (`dropout.py`), round the drop
probability to a multiple of 2**-16 (p = 0.1 becomes 0.1000061); the kernels scale
by the exact 1/(1 - p) of that rounded p (`drawn_dropout_p`), so the expectation
stays unbiased. FlashAttention-2 goes further, 8-bit slices and 16 decisions per call,
at the price of p rounded to 1/256 (0.1 becomes 0.1016).

Philox runs `PHILOX_ROUNDS` = 7 rounds, as FlashAttention-2's dropout does
(csrc/flash_attn/src/philox.cuh), not Triton's default 10: 7 is the fewest rounds of
Philox-4x32 that pass TestU01's BigCrush (Salmon et al., SC'11, whose default adds
three for margin), and the rounds are most of dropout's extra integer work. Compiled
for sm_90, the forward's dropout path took 578 more PTX instructions per tile with
10 rounds and 64-bit counters (330 of them Philox's multiplies, xors and adds), and
425 with 7 rounds and 32-bit counter words.

The mask can also travel as bits (`LaunchConfig.dropout_mask` of the forward): a
(T, H, ceil(L / 32)) int32 array, bit j of word w of token t, head h deciding key
32 w + j of t's score row. "saved": the forward draws as above and writes the bits
(`_save_keep`); "prebuilt": `_keep_bits_kernel` draws the same decisions before the
forward. The backward (and a prebuilt forward) then reads bits (`_read_keep`)
instead of running Philox. Same masks, bit for bit; 1/8 byte per score kept for the
backward.

The seed is a (1,) int64 device tensor (`rng.next_seed`, or `rng.seed_tensor` of a
caller's int) that the kernels `tl.load`: no host sync, and a replayed CUDA graph
reads the seed its captured `next_seed` kernels wrote.
"""
import torch

from .dispatch import tl, triton
from .rng import seed_tensor


PHILOX_ROUNDS = tl.constexpr(7)


RANDOM_BITS = 16  # per keep-decision: two decisions per 32-bit Philox word


def _threshold16(dropout_p: float) -> int:
    return min(round(dropout_p * 2**RANDOM_BITS), 2**RANDOM_BITS - 1)


def drawn_dropout_p(dropout_p: float) -> float:
    """The drop probability the kernels' masks have for `dropout_p`: p rounded to a
    multiple of 2**-16. The kernels scale kept probabilities by 1/(1 - this)."""
    return _threshold16(dropout_p) / 2**RANDOM_BITS


def _rng_threshold(dropout_p: float) -> int:
    """The keep threshold round(p * 2**16) in the high half of a 32-bit word, as int32
    bits (the kernels reinterpret them as uint32; `_dropout_keep` puts each decision's
    16 bits there): an int32 for every p, so no p value compiles a new kernel signature."""
    t = _threshold16(dropout_p) << (32 - RANDOM_BITS)
    return t - 2**32 if t >= 2**31 else t


@triton.jit
def _rng_rows(max_seqlen, rows):
    # (M, 1) int32 counter word c0 of each score row's first Philox call: 4 calls per 32 keys
    groups = (max_seqlen + 31) // 32 * 4
    return rows[:, None] * groups


@triton.jit
def _dropout_keep(seed, rng_head, rng_rows, start_n, threshold, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # (BLOCK_M, BLOCK_N) keep-decisions for columns start_n .. start_n + BLOCK_N of the
    # rows whose counter words `rng_rows` (M, 1) holds, in the score matrix of (batch,
    # head) number `rng_head` = b * H + h; `threshold` = `_rng_threshold(p)` as uint32;
    # BLOCK_N >= 16, start_n % BLOCK_N == 0. A key's 16 random bits are the high half of
    # a 32-bit value whose low half does not change the compare (the threshold's is 0).
    tl.static_assert(BLOCK_N >= 16, "attention dropout draws keys in tiles of 16 or more")
    WIDTH: tl.constexpr = 32 if BLOCK_N < 32 else BLOCK_N      # whole 32-key blocks
    c0 = (rng_rows + start_n // 32 * 4 + tl.arange(0, WIDTH // 8)[None, :]).to(tl.uint32, bitcast=True)  # (M, W/8)
    zero = c0 * 0
    r0, r1, r2, r3 = tl.philox(seed, c0, zero + rng_head.to(tl.uint32, bitcast=True), zero, zero, PHILOX_ROUNDS)
    words = tl.reshape(tl.join(tl.join(r0, r2), tl.join(r1, r3)), (BLOCK_M, WIDTH // 8, 4))  # [call g, word j]
    keep = tl.join(words >= threshold, (words << 16) >= threshold)                          # [g, j, half k]
    keep = tl.reshape(keep, (BLOCK_M, WIDTH // 32, 4, 4, 2))                                # [block, c, j, k]
    # key 32 block + 8 j + 2 c + k: the keys an MMA tile's thread holds (see above)
    keep = tl.reshape(tl.permute(keep, (0, 1, 3, 2, 4)), (BLOCK_M, WIDTH))
    if BLOCK_N < 32:  # the half of the 32-key block that this tile covers
        first, second = tl.split(tl.permute(tl.reshape(keep, (BLOCK_M, 2, 16)), (0, 2, 1)))
        keep = tl.where(start_n % 32 == 0, first, second)
    return keep


@triton.jit
def _read_keep(KEEP_BITS, row_words, row_mask, keys, start_n, seqlen, BLOCK_N: tl.constexpr):
    # Keep-decisions of one tile read from stored bits. `row_words`: the int64 offset of
    # each score row's words, (token * H + head) * words; `row_mask`: the rows that
    # exist; both shaped along the tile's row axis, `keys` = start_n + arange(BLOCK_N)
    # along the other. A row's BLOCK_N keys span BLOCK_N / 32 words (one, when BLOCK_N
    # <= 32): one small load per word, broadcast over its 32 keys, rather than a
    # gather per score. Words past the sequence's last (never written) read as 0: their
    # keys are masked out of the scores anyway.
    first = start_n // 32
    word = tl.load(KEEP_BITS + row_words + first, mask=row_mask, other=0) + keys * 0  # (tile)
    for i in tl.static_range(1, (BLOCK_N + 31) // 32):
        in_row = (row_words * 0 + first + i) * 32 < seqlen
        more = tl.load(KEEP_BITS + row_words + first + i, mask=row_mask & in_row, other=0)
        word = tl.where(keys // 32 == first + i, more, word)
    return ((word >> (keys % 32)) & 1) != 0


@triton.jit
def _save_keep(KEEP_BITS, row_words, row_mask, keep, p, cols, start_n, seqlen, BLOCK_N: tl.constexpr):
    # Writes a (rows, BLOCK_N) tile of keep-decisions as bits: `row_words` (rows,) the
    # int64 offset of each row's words, `row_mask` (rows,) the rows that exist, `cols`
    # (BLOCK_N,) = start_n + arange(BLOCK_N), BLOCK_N a multiple of 32 (each tile then
    # writes whole words). Each word is a row reduction, like softmax's sums. `p` is the
    # probability tile that `keep` masks, a finite tensor: the bit values are built on
    # it (+ 0 * p) so the reduction runs in p's layout, the one `keep` is already in.
    # Built from `cols` alone, they would take another layout, and the compiler would
    # then compute the Philox numbers a second time rather than move them (+97
    # multiplies and +96 xors per tile in sm_90 PTX).
    first = start_n // 32
    bit = (1 << (cols % 32))[None, :] + (p * 0.0).to(tl.int32)                # (rows, N)
    for i in tl.static_range(BLOCK_N // 32):
        in_word = (cols // 32 == first + i)[None, :] & keep
        word = tl.sum(tl.where(in_word, bit, 0), 1)  # distinct bits: the sum is their OR
        in_row = (row_words * 0 + first + i) * 32 < seqlen  # a sequence's last tile can pass its last word
        tl.store(KEEP_BITS + row_words + first + i, word, mask=row_mask & in_row)


@triton.jit
def _halves_kept(r, threshold, shift):
    # The two decisions of word r as bits `shift` (high half) and `shift + 1` (low half).
    return (((r >= threshold).to(tl.int32) << shift)
            | (((r << 16) >= threshold).to(tl.int32) << (shift + 1)))


@triton.jit(do_not_specialize=["rng_threshold", "max_seqlen", "words", "first_seq"])
def _keep_bits_kernel(
    KEEP_BITS,   # (T, H, W) int32 out: bit j of word w = keep key 32 w + j (W = ceil(L / 32))
    CU_SEQLENS,  # (B + 1,) int32 start offset of each sequence in T
    SEED,        # (1,) int64 Philox seed
    rng_threshold, max_seqlen, nheads, words, first_seq,
    BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr,
):
    # Program (i, h, b): rows i * BLOCK_R .. of head h of sequence b, the words of
    # their keys < seqlen (the rest of the row stays unwritten: a short sequence in a
    # long batch draws only its own scores). A word is 4 Philox calls of 8 decisions:
    # counters c0 = row * G + 4 w + c (c < 4), half k of word j deciding key
    # 32 w + 8 j + 2 c + k, exactly as `_dropout_keep` tiles them.
    bid = first_seq + tl.program_id(2)   # a launch covers at most MAX_GRID_BATCH sequences
    hid = tl.program_id(1)
    seq_start = tl.load(CU_SEQLENS + bid)
    seqlen = tl.load(CU_SEQLENS + bid + 1) - seq_start
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    if tl.program_id(0) * BLOCK_R >= seqlen:
        return
    seed = tl.load(SEED)
    threshold = rng_threshold.to(tl.uint32, bitcast=True)
    groups = (max_seqlen + 31) // 32 * 4
    c = tl.arange(0, 4)[None, None, :]                                        # (1, 1, 4)
    head = (bid * nheads + hid).to(tl.uint32, bitcast=True)
    out_rows = ((seq_start + rows).to(tl.int64) * nheads + hid) * words       # (R,)
    seq_words = (seqlen + 31) // 32
    for w0 in range(0, seq_words, BLOCK_W):
        w = w0 + tl.arange(0, BLOCK_W)[None, :, None]                          # (1, BW, 1)
        c0 = (rows[:, None, None] * groups + w * 4 + c).to(tl.uint32, bitcast=True)  # (R, BW, 4)
        zero = c0 * 0
        r0, r1, r2, r3 = tl.philox(seed, c0, zero + head, zero, zero, PHILOX_ROUNDS)
        shift = 2 * c
        bits = (_halves_kept(r0, threshold, shift) | _halves_kept(r1, threshold, shift + 8)
                | _halves_kept(r2, threshold, shift + 16) | _halves_kept(r3, threshold, shift + 24))
        word = tl.sum(bits, 2)  # distinct bits: the sum is their OR                 (R, BW)
        ws = w0 + tl.arange(0, BLOCK_W)
        tl.store(KEEP_BITS + out_rows[:, None] + ws[None, :], word,
                 mask=(rows < seqlen)[:, None] & (ws < seq_words)[None, :])


# CUDA launches at most 65535 programs along a grid's second and third dimensions, where the
# attention kernels put the sequences: a batch of more is launched in slices of that many.
MAX_GRID_BATCH = 65535


def _mask_words(max_seqlen: int) -> int:
    """32-bit words per score row of a keep-bits array: (T, H, _mask_words(max_seqlen))."""
    # It follows the batch, as max_seqlen does, so the kernels that take it list it in
    # do_not_specialize: Triton would otherwise compile again when it becomes 1 or a
    # multiple of 16 (on the H200, mask_words compiled the forward four times in six batches).
    return triton.cdiv(max_seqlen, 32)


def _keep_bits(cu_seqlens, total, max_seqlen, nheads, dropout_p, seed):
    """The (T, H, ceil(max_seqlen / 32)) int32 keep-bits of (seed, dropout_p): the
    decisions `_dropout_keep` makes, drawn once for a prebuilt-mask forward and backward.
    Only the words holding a sequence's own keys are written (bits past its end in its
    last word are drawn and never read)."""
    words = _mask_words(max_seqlen)
    bits = torch.empty((total, nheads, words), dtype=torch.int32, device=cu_seqlens.device)
    if bits.numel():
        block_r, block_w = 32, 4  # one BLOCK_W for every batch: one compiled kernel
        batch = cu_seqlens.numel() - 1
        for first in range(0, batch, MAX_GRID_BATCH):
            grid = (triton.cdiv(max_seqlen, block_r), nheads, min(MAX_GRID_BATCH, batch - first))
            _keep_bits_kernel[grid](bits, cu_seqlens, seed, _rng_threshold(dropout_p), max_seqlen, nheads, words,
                                    first, BLOCK_R=block_r, BLOCK_W=block_w)
    return bits


@triton.jit(do_not_specialize=["rng_threshold", "max_seqlen"])
def _dropout_mask_kernel(
    MASK,        # (B, H, L, L) uint8 out: 1 where the kernels keep a probability
    SEED,        # (1,) int64 Philox seed
    rng_threshold, max_seqlen, nheads,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # For tests: materialises the keep-mask that the forward and backward draw
    # from the same Philox stream (FlashAttention's tests do the same).
    start_m = tl.program_id(0)
    bid = tl.program_id(1)
    hid = tl.program_id(2)
    seed = tl.load(SEED)
    threshold = rng_threshold.to(tl.uint32, bitcast=True)
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rng_rows = _rng_rows(max_seqlen, offs_m)
    row_base = ((bid * nheads + hid).to(tl.int64) * max_seqlen + offs_m.to(tl.int64)[:, None]) * max_seqlen
    for start_n in range(0, max_seqlen, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        keep = _dropout_keep(seed, bid * nheads + hid, rng_rows, start_n, threshold, BLOCK_M, BLOCK_N)
        mask = (offs_m < max_seqlen)[:, None] & (cols < max_seqlen)[None, :]
        tl.store(MASK + row_base + cols[None, :], keep.to(tl.uint8), mask=mask)


def _dropout_mask(cu_seqlens, max_seqlen, nheads, dropout_p, seed, device=None):
    """The exact keep-mask (B, H, L, L) bool that the Triton attention kernels use for
    (seed, dropout_p); `seed` an int or the (1,) int64 seed tensor the kernels read.
    Feed it to `attention_ref(dropout_mask=...)` to check them."""
    batch = cu_seqlens.numel() - 1
    device = device if device is not None else cu_seqlens.device
    if not isinstance(seed, torch.Tensor):
        seed = seed_tensor(seed, device)
    mask = torch.zeros((batch, nheads, max_seqlen, max_seqlen), dtype=torch.uint8, device=device)
    if mask.numel():
        grid = (triton.cdiv(max_seqlen, 32), batch, nheads)
        _dropout_mask_kernel[grid](mask, seed, _rng_threshold(dropout_p), max_seqlen, nheads,
                                   BLOCK_M=32, BLOCK_N=32)
    return mask.bool()
