// Kernels of the replayed MoE layer (compiled at run time by NVRTC for the
// card in use; see src/gpu/kernels.rs), after kernels/bf16_act.cuh (the
// Rust side prepends it). No headers: bf16 values travel as unsigned short
// and are converted with bit operations, so NVRTC needs nothing beyond its
// built-ins.

__device__ __forceinline__ u64 mix64(u64 z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Seeded uniform values in [-scale, scale): element i depends only on
// (seed, i), so any GPU can regenerate any expert's weights bit for bit.
extern "C" __global__ void gen_bf16(bf16_t* out, u64 n, u64 seed, float scale) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n;
         i += (u64)gridDim.x * blockDim.x) {
        u64 h = mix64(seed ^ mix64(i));
        float u = (float)(h >> 40) * (1.0f / 16777216.0f);  // [0, 1)
        out[i] = f2bf((2.0f * u - 1.0f) * scale);
    }
}

// One thread busy for `ns` nanoseconds of the GPU's global timer and
// nothing else: an interval of light load between GEMMs, for calibrate's
// power measurement (how fast a GEMM runs when the GPU rests part of the
// time).
extern "C" __global__ void spin_ns(u64 ns) {
    u64 t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    } while (t - t0 < ns);
}

// For every token-copy c: its index among this rank's copies of the same
// expert (slot[c]), in copy order, so that the same copies land in the same
// rows on every run (a split expert's helper always computes the same
// copies, and a training step's weight gradients are reproducible), and
// the per-expert counts. Three passes over blocks of blockDim copies:
// route_count (each block's count per expert, and the totals), route_scan
// (per expert, the copies in the blocks before each block), route_slots.

// Pass 1: block_counts[block * n_experts + e] and counts[e] (zeroed by the
// caller; integer sums, so their order does not matter). Dynamic shared
// memory: n_experts ints.
extern "C" __global__ void route_count(const int* ids, int n_copies, int n_experts,
                                       int* counts, int* block_counts) {
    extern __shared__ int local[];
    for (int e = threadIdx.x; e < n_experts; e += blockDim.x) local[e] = 0;
    __syncthreads();
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c < n_copies) atomicAdd(&local[ids[c]], 1);
    __syncthreads();
    for (int e = threadIdx.x; e < n_experts; e += blockDim.x) {
        int n = local[e];
        block_counts[(long long)blockIdx.x * n_experts + e] = n;
        if (n) atomicAdd(&counts[e], n);
    }
}

// Pass 2, one block per expert: block_counts[b][e] becomes the copies of e
// in blocks before b (an exclusive scan, tile by tile). blockDim a power of
// two; dynamic shared memory: blockDim ints.
extern "C" __global__ void route_scan(int n_blocks, int n_experts, int* block_counts) {
    extern __shared__ int t[];
    int e = blockIdx.x;
    int carry = 0;
    for (int lo = 0; lo < n_blocks; lo += blockDim.x) {
        int b = lo + threadIdx.x;
        long long at = (long long)b * n_experts + e;
        int v = b < n_blocks ? block_counts[at] : 0;
        t[threadIdx.x] = v;
        __syncthreads();
        for (int off = 1; off < blockDim.x; off <<= 1) {
            int x = threadIdx.x >= off ? t[threadIdx.x - off] : 0;
            __syncthreads();
            t[threadIdx.x] += x;
            __syncthreads();
        }
        if (b < n_blocks) block_counts[at] = carry + t[threadIdx.x] - v;
        carry += t[blockDim.x - 1];
        __syncthreads();
    }
}

// Pass 3: slot[c] = the copies of c's expert in earlier blocks, in earlier
// warps of this block, and in earlier lanes of this warp. blockDim a
// multiple of 32, as in pass 1; dynamic shared memory: (blockDim / 32) *
// n_experts ints.
extern "C" __global__ void route_slots(const int* ids, int n_copies, int n_experts,
                                       const int* block_counts, int* slot) {
    extern __shared__ int per_warp[];
    int warps = blockDim.x >> 5, w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int i = threadIdx.x; i < warps * n_experts; i += blockDim.x) per_warp[i] = 0;
    __syncthreads();
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    int e = c < n_copies ? ids[c] : -1;
    unsigned same = __match_any_sync(0xffffffffu, e);
    int before = __popc(same & ((1u << lane) - 1u));
    if (e >= 0 && before == 0) per_warp[w * n_experts + e] = __popc(same);
    __syncthreads();
    if (e >= 0) {
        int r = block_counts[(long long)blockIdx.x * n_experts + e] + before;
        for (int v = 0; v < w; ++v) r += per_warp[v * n_experts + e];
        slot[c] = r;
    }
}

// One segment of an expert's copies on this rank: local in-expert indices
// [lo, hi) go to rows starting at dst (token rows of row_bytes), and their
// results will come back to rows starting at ret, with the down bias at bias.
struct PackSeg {
    long long lo, hi;
    u64 dst, ret, bias;
};

// Copy each token-copy's input row to where the plan sends it (the send
// buffer for remote GPUs, the compute buffer for this one), and remember
// where its result will be for the combine. One warp per copy.
extern "C" __global__ void pack_rows(const bf16_t* x, const int* ids, const int* slot,
                                     int n_copies, int top_k, const int* seg_start,
                                     const PackSeg* segs, int row_bytes, u64* ret_ptr,
                                     u64* bias_ptr) {
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (warp >= n_copies) return;
    int e = ids[warp];
    long long i = slot[warp];
    int s = seg_start[e], s_end = seg_start[e + 1];
    while (s < s_end - 1 && i >= segs[s].hi) s++;
    PackSeg g = segs[s];
    long long row = i - g.lo;
    const uint4* src = (const uint4*)((const char*)x + (long long)(warp / top_k) * row_bytes);
    uint4* dst = (uint4*)((char*)g.dst + row * row_bytes);
    int n16 = row_bytes >> 4;
    for (int j = lane; j < n16; j += 32) dst[j] = src[j];
    if (lane == 0) {
        ret_ptr[warp] = g.ret + row * row_bytes;
        bias_ptr[warp] = g.bias;
    }
}

// Rows [vstart, vstart + len) of a virtual row space map to len contiguous
// rows at src and at dst.
struct CopySeg {
    long long vstart, len;
    u64 src, dst;
};

// Copy many row segments in one launch; one warp per row, segments found
// by binary search on vstart.
extern "C" __global__ void copy_rows(const CopySeg* segs, int nseg, long long total_rows,
                                     int row_bytes) {
    long long warp = (blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (warp >= total_rows) return;
    int lo = 0, hi = nseg - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) >> 1;
        if (segs[mid].vstart <= warp) lo = mid; else hi = mid - 1;
    }
    CopySeg g = segs[lo];
    long long row = warp - g.vstart;
    const uint4* src = (const uint4*)((const char*)g.src + row * row_bytes);
    uint4* dst = (uint4*)((char*)g.dst + row * row_bytes);
    int n16 = row_bytes >> 4;
    for (int j = lane; j < n16; j += 32) dst[j] = src[j];
}

// gpt-oss clamped SwiGLU (alpha 1.702, limit 7) or plain SwiGLU, on a
// gate_up row laid out [gate (I) | up (I)], with the gate_up bias.
__device__ __forceinline__ float swiglu(float g, float u, int kind) {
    if (kind == 0) {
        g = fminf(g, 7.0f);
        u = fminf(fmaxf(u, -7.0f), 7.0f);
        float glu = g / (1.0f + __expf(-1.702f * g));
        return (u + 1.0f) * glu;
    }
    return g / (1.0f + __expf(-g)) * u;
}

// Programmatic dependent launch (sm_90+): a kernel that opens with
// pdl_wait() may be launched before the previous kernel of its stream
// finished (Dev::launch does so for such kernels); pdl_wait() returns once
// that kernel completed and its writes are visible. Without the launch
// attribute, and before sm_90, both are no-ops.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;");
#endif
}

// Eight columns of one row: 16-byte loads of gate, up and their biases,
// one 16-byte store.
__device__ __forceinline__ void act8_load(const bf16_t* __restrict__ h,
                                          const bf16_t* __restrict__ bias, long long r,
                                          int j, int inter, uint4* v) {
    const bf16_t* hr = h + r * 2 * inter;
    v[0] = *(const uint4*)(hr + j);
    v[1] = *(const uint4*)(hr + inter + j);
    v[2] = *(const uint4*)(bias + j);
    v[3] = *(const uint4*)(bias + inter + j);
}
__device__ __forceinline__ void act8_store(const uint4* v, bf16_t* __restrict__ out, long long r,
                                           int j, int inter, int kind) {
    uint4 o;
    o.x = act_pair(v[0].x, v[1].x, v[2].x, v[3].x, kind);
    o.y = act_pair(v[0].y, v[1].y, v[2].y, v[3].y, kind);
    o.z = act_pair(v[0].z, v[1].z, v[2].z, v[3].z, kind);
    o.w = act_pair(v[0].w, v[1].w, v[2].w, v[3].w, kind);
    *(uint4*)(out + r * inter + j) = o;
}

// Up to ACT_SEGS consecutive units' rows in one activation launch (passed
// by value): rows [end[s-1], end[s]) belong to unit s and take its expert's
// bias (end[-1] = 0). Matches src/gpu/units.rs's ActSegs.
#define ACT_SEGS 16
struct ActSegs {
    long long end[ACT_SEGS];
    u64 bias[ACT_SEGS];
    int n;
};

// The bias of row r: a select over the segments with constant indices, so
// the parameter block is read in place (a dynamic index would copy it to
// local memory per thread).
__device__ __forceinline__ const bf16_t* seg_bias(const ActSegs& s, long long r) {
    u64 b = s.bias[0];
#pragma unroll
    for (int k = 1; k < ACT_SEGS; k++) {
        if (k < s.n && r >= s.end[k - 1]) b = s.bias[k];
    }
    return (const bf16_t*)b;
}

// out[r, j] = act(h[r, j] + b[j], h[r, I + j] + b[I + j]) for the rows of
// one or more units (each with its own bias b, from segs). Batching several
// units' rows into one launch saves the kernel boundaries between their
// GEMMs: the gate_up GEMMs of a batch run back to back, then this kernel,
// then their down GEMMs.
// Memory-bound: 8 columns per item through 16-byte loads and stores when
// I is a multiple of 8 and every pointer 16-byte aligned (the gpt-oss
// layer; `aligned` says the biases are), else 2 columns (4-byte words).
// Grid-stride, two items per iteration with both items' loads issued
// before either's arithmetic, so a thread keeps 64 bytes in flight:
// Dev::launch gives it one resident wave of blocks, whatever grid the
// caller sized. The index is split into (row, column) with 32-bit division
// when it fits. Launched as a programmatic dependent of the gate_up GEMM
// (see pdl_wait); the down GEMM that follows may be scheduled early too.
extern "C" __global__ void act_rows(const bf16_t* __restrict__ h, ActSegs segs,
                                    bf16_t* __restrict__ out, long long rows, int inter,
                                    int kind, int aligned) {
    pdl_wait();
    pdl_launch_dependents();
    bool v8 = (inter % 8 == 0) && aligned && ((((u64)h) | ((u64)out)) & 15ull) == 0;
    int width = v8 ? 8 : 2;
    unsigned int per_row = (unsigned int)(inter / width);
    long long n = rows * (long long)per_row;
    bool narrow = n < (1ll << 32);
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < n;
         idx += 2 * stride) {
        long long r[2];
        int j[2];
        bool has[2] = {true, idx + stride < n};
        for (int k = 0; k < 2; k++) {
            long long at = idx + k * stride;
            if (narrow) {
                unsigned int u = (unsigned int)at;
                unsigned int q = u / per_row;
                r[k] = q;
                j[k] = (int)(u - q * per_row) * width;
            } else {
                r[k] = at / per_row;
                j[k] = (int)(at - r[k] * per_row) * width;
            }
        }
        if (v8) {
            uint4 v[2][4];
            act8_load(h, seg_bias(segs, r[0]), r[0], j[0], inter, v[0]);
            if (has[1]) act8_load(h, seg_bias(segs, r[1]), r[1], j[1], inter, v[1]);
            act8_store(v[0], out, r[0], j[0], inter, kind);
            if (has[1]) act8_store(v[1], out, r[1], j[1], inter, kind);
        } else {
            for (int k = 0; k < 2; k++) {
                if (!has[k]) break;
                const bf16_t* bias = seg_bias(segs, r[k]);
                const bf16_t* hr = h + r[k] * 2 * inter;
                unsigned int gg = *(const unsigned int*)(hr + j[k]);
                unsigned int uu = *(const unsigned int*)(hr + inter + j[k]);
                unsigned int bg = *(const unsigned int*)(bias + j[k]);
                unsigned int bu = *(const unsigned int*)(bias + inter + j[k]);
                *(unsigned int*)(out + r[k] * inter + j[k]) = act_pair(gg, uu, bg, bu, kind);
            }
        }
    }
}

// out[t] = sum_k w[t,k] * (y_k + down_bias_k), fp32 accumulation over the
// copies in order k = 0..top_k. Grid: x = tokens, y = slices of the row;
// each thread takes 8 columns (16-byte loads) when hidden is a multiple of
// 8, else 2. One block per token used to leave decode-sized combines
// latency bound (a few hundred blocks walking each row serially); the
// arithmetic per element is unchanged, so the results are the same bits.
__device__ __forceinline__ void combine_add(float* a, unsigned int y, unsigned int b, float wk) {
    a[0] += wk * (bf2f(y & 0xffff) + bf2f(b & 0xffff));
    a[1] += wk * (bf2f(y >> 16) + bf2f(b >> 16));
}
extern "C" __global__ void combine_rows(const u64* ret_ptr, const u64* bias_ptr,
                                        const float* w, int top_k, int hidden,
                                        bf16_t* out) {
    long long t = blockIdx.x;
    int width = (hidden % 8 == 0) ? 8 : 2;
    int j = (blockIdx.y * blockDim.x + threadIdx.x) * width;
    if (j >= hidden) return;
    long long c0 = t * top_k;
    float a[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    for (int k = 0; k < top_k; k++) {
        float wk = w[c0 + k];
        const bf16_t* yp = (const bf16_t*)ret_ptr[c0 + k] + j;
        const bf16_t* bp = (const bf16_t*)bias_ptr[c0 + k] + j;
        if (width == 8 && ((((u64)yp) | ((u64)bp)) & 15ull) == 0) {
            uint4 y = *(const uint4*)yp;
            uint4 b = *(const uint4*)bp;
            combine_add(a, y.x, b.x, wk);
            combine_add(a + 2, y.y, b.y, wk);
            combine_add(a + 4, y.z, b.z, wk);
            combine_add(a + 6, y.w, b.w, wk);
        } else {
            // constant indices after unrolling: `a` stays in registers
#pragma unroll
            for (int q = 0; q < 8; q += 2) {
                if (q < width) {
                    combine_add(a + q, *(const unsigned int*)(yp + q),
                                *(const unsigned int*)(bp + q), wk);
                }
            }
        }
    }
    bf16_t* o = out + t * hidden + j;
    if (width == 8 && (((u64)o) & 15ull) == 0) {
        uint4 v;
        v.x = (unsigned int)f2bf(a[0]) | ((unsigned int)f2bf(a[1]) << 16);
        v.y = (unsigned int)f2bf(a[2]) | ((unsigned int)f2bf(a[3]) << 16);
        v.z = (unsigned int)f2bf(a[4]) | ((unsigned int)f2bf(a[5]) << 16);
        v.w = (unsigned int)f2bf(a[6]) | ((unsigned int)f2bf(a[7]) << 16);
        *(uint4*)o = v;
    } else {
#pragma unroll
        for (int q = 0; q < 8; q += 2) {
            if (q < width) {
                *(unsigned int*)(o + q) =
                    (unsigned int)f2bf(a[q]) | ((unsigned int)f2bf(a[q + 1]) << 16);
            }
        }
    }
}

// ---- dense fp32 reference for sampled tokens, one expert at a time ----

// h[s, j] = sum_d x[tok[s], d] * Wgu[d, j] + b[j], fp32; s over the samples
// routed to this expert.
extern "C" __global__ void ref_gate_up(const bf16_t* x, const int* tok, int ns,
                                       const bf16_t* wgu, const bf16_t* bgu, int hidden,
                                       int inter, float* h) {
    int s = blockIdx.y;
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (s >= ns || j >= 2 * inter) return;
    const bf16_t* xr = x + (long long)tok[s] * hidden;
    float acc = 0.f;
    for (int d = 0; d < hidden; d++) acc += bf2f(xr[d]) * bf2f(wgu[(long long)d * 2 * inter + j]);
    h[(long long)s * 2 * inter + j] = acc + bf2f(bgu[j]);
}

extern "C" __global__ void ref_act(const float* h, int ns, int inter, int kind, float* a) {
    int s = blockIdx.y;
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (s >= ns || j >= inter) return;
    const float* hr = h + (long long)s * 2 * inter;
    a[(long long)s * inter + j] = swiglu(hr[j], hr[inter + j], kind);
}

// out[slot[s], j] += w[s] * (sum_i a[s, i] * Wd[i, j] + bd[j])
extern "C" __global__ void ref_down(const float* a, int ns, const bf16_t* wd, const bf16_t* bd,
                                    int hidden, int inter, const int* out_row, const float* w,
                                    float* out) {
    int s = blockIdx.y;
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (s >= ns || j >= hidden) return;
    const float* ar = a + (long long)s * inter;
    float acc = 0.f;
    for (int i = 0; i < inter; i++) acc += ar[i] * bf2f(wd[(long long)i * hidden + j]);
    out[(long long)out_row[s] * hidden + j] += w[s] * (acc + bf2f(bd[j]));
}

// Gather sampled output rows (bf16) as fp32.
extern "C" __global__ void gather_out(const bf16_t* out, const int* tok, int ns, int hidden,
                                      float* dst) {
    int s = blockIdx.y;
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (s >= ns || j >= hidden) return;
    dst[(long long)s * hidden + j] = bf2f(out[(long long)tok[s] * hidden + j]);
}

// ---- backward of the training step ----

// Combine backward, one warp per copy c of token t = c / top_k: the router
// weight's gradient <dY[t], y_c + b_c> (fp32, into dw[c]), then w_c * dY[t]
// written over y_c, where the copy's result lies (ret_ptr[c]): the mirror of
// the combine. The warp reads the whole row before writing it.
extern "C" __global__ void bwd_scatter(const bf16_t* dy, const float* w, const u64* ret_ptr,
                                       const u64* bias_ptr, int n_copies, int top_k,
                                       int hidden, float* dw) {
    int c = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (c >= n_copies) return;
    const bf16_t* g = dy + (long long)(c / top_k) * hidden;
    bf16_t* y = (bf16_t*)ret_ptr[c];
    const bf16_t* b = (const bf16_t*)bias_ptr[c];
    float acc = 0.f;
    for (int j = lane * 2; j < hidden; j += 64) {
        unsigned int gg = *(const unsigned int*)(g + j);
        unsigned int yy = *(const unsigned int*)(y + j);
        unsigned int bb = *(const unsigned int*)(b + j);
        acc += bf2f(gg & 0xffff) * (bf2f(yy & 0xffff) + bf2f(bb & 0xffff));
        acc += bf2f(gg >> 16) * (bf2f(yy >> 16) + bf2f(bb >> 16));
    }
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    __syncwarp();
    float wc = w[c];
    for (int j = lane * 2; j < hidden; j += 64) {
        unsigned int gg = *(const unsigned int*)(g + j);
        *(unsigned int*)(y + j) = (unsigned int)f2bf(wc * bf2f(gg & 0xffff)) |
                                  ((unsigned int)f2bf(wc * bf2f(gg >> 16)) << 16);
    }
    if (lane == 0) dw[c] = acc;
}

// Dispatch backward: dX[t] = sum over the token's copies of their input
// gradients (back where each copy's result came home). One block per token.
extern "C" __global__ void sum_copies(const u64* ret_ptr, int top_k, int hidden, bf16_t* out) {
    int t = blockIdx.x;
    for (int j = threadIdx.x * 2; j < hidden; j += blockDim.x * 2) {
        float a0 = 0.f, a1 = 0.f;
        for (int k = 0; k < top_k; k++) {
            unsigned int y = *(const unsigned int*)((const bf16_t*)ret_ptr[t * top_k + k] + j);
            a0 += bf2f(y & 0xffff);
            a1 += bf2f(y >> 16);
        }
        *(unsigned int*)(out + (long long)t * hidden + j) =
            (unsigned int)f2bf(a0) | ((unsigned int)f2bf(a1) << 16);
    }
}

// d(out)/d(gate), d(out)/d(up) of `swiglu`, for the gradient `d` of its
// output; clamps pass the gradient inside [min, max] as torch.clamp does.
__device__ __forceinline__ void swiglu_bwd(float g, float u, float d, int kind, float* dg,
                                           float* du) {
    if (kind == 0) {
        float gc = fminf(g, 7.0f);
        float uc = fminf(fmaxf(u, -7.0f), 7.0f);
        float s = 1.0f / (1.0f + expf(-1.702f * gc));
        float glu = gc * s;
        *dg = g <= 7.0f ? d * (uc + 1.0f) * (s + 1.702f * gc * s * (1.0f - s)) : 0.0f;
        *du = (u >= -7.0f && u <= 7.0f) ? d * glu : 0.0f;
        return;
    }
    float s = 1.0f / (1.0f + expf(-g));
    *dg = d * u * (s + g * s * (1.0f - s));
    *du = d * g * s;
}

// Activation backward over rows of [gate | up] (without their bias, which
// is added here as in act_rows): the gradient dh is written over h. Two
// columns per thread.
extern "C" __global__ void act_bwd_rows(bf16_t* h, const bf16_t* bias, const bf16_t* da,
                                        long long rows, int inter, int kind) {
    int half = inter / 2;
    long long n = rows * (long long)half;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < n;
         idx += (long long)gridDim.x * blockDim.x) {
        long long r = idx / half;
        int j = (int)(idx - r * half) * 2;
        bf16_t* hr = h + r * 2 * inter;
        unsigned int gg = *(const unsigned int*)(hr + j);
        unsigned int uu = *(const unsigned int*)(hr + inter + j);
        unsigned int bg = *(const unsigned int*)(bias + j);
        unsigned int bu = *(const unsigned int*)(bias + inter + j);
        unsigned int dd = *(const unsigned int*)(da + r * inter + j);
        float dg0, du0, dg1, du1;
        swiglu_bwd(bf2f(gg & 0xffff) + bf2f(bg & 0xffff), bf2f(uu & 0xffff) + bf2f(bu & 0xffff),
                   bf2f(dd & 0xffff), kind, &dg0, &du0);
        swiglu_bwd(bf2f(gg >> 16) + bf2f(bg >> 16), bf2f(uu >> 16) + bf2f(bu >> 16),
                   bf2f(dd >> 16), kind, &dg1, &du1);
        *(unsigned int*)(hr + j) = (unsigned int)f2bf(dg0) | ((unsigned int)f2bf(dg1) << 16);
        *(unsigned int*)(hr + inter + j) =
            (unsigned int)f2bf(du0) | ((unsigned int)f2bf(du1) << 16);
    }
}

extern "C" __global__ void fill_bf16(bf16_t* p, long long n, float v) {
    bf16_t b = f2bf(v);
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        p[i] = b;
}

// dst += src (bf16, added in fp32): a returned weight gradient into the
// owner's.
extern "C" __global__ void add_bf16(bf16_t* dst, const bf16_t* src, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        dst[i] = f2bf(bf2f(dst[i]) + bf2f(src[i]));
}

// ---- dense fp32 reference of the backward (cuBLAS fp32 GEMMs between) ----

extern "C" __global__ void to_f32(const bf16_t* src, long long n, float* dst) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        dst[i] = bf2f(src[i]);
}

// dst[s, :] = src[row[s], :] as fp32.
extern "C" __global__ void gather_rows_f32(const bf16_t* src, const int* row, int ns,
                                           int hidden, float* dst) {
    int s = blockIdx.y;
    for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < hidden; j += gridDim.x * blockDim.x)
        dst[(long long)s * hidden + j] = bf2f(src[(long long)row[s] * hidden + j]);
}

// h += gate_up bias (in place), a = activation(h).
extern "C" __global__ void ref_bias_act(float* h, const float* bias, int ns, int inter,
                                        int kind, float* a) {
    int s = blockIdx.y;
    for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < inter; j += gridDim.x * blockDim.x) {
        float* hr = h + (long long)s * 2 * inter;
        float g = hr[j] + bias[j], u = hr[inter + j] + bias[inter + j];
        hr[j] = g;
        hr[inter + j] = u;
        float out;
        if (kind == 0) {
            float gc = fminf(g, 7.0f), uc = fminf(fmaxf(u, -7.0f), 7.0f);
            out = (uc + 1.0f) * gc / (1.0f + expf(-1.702f * gc));
        } else {
            out = g / (1.0f + expf(-g)) * u;
        }
        a[(long long)s * inter + j] = out;
    }
}

// Router-weight gradient of each row, dw[s] = <g[s], y[s] + bd>, then g[s]
// scaled in place by the router weight w[s]. One block per row.
extern "C" __global__ void ref_router(float* g, const float* y, const float* bd, const float* w,
                                      int hidden, float* dw) {
    __shared__ float part[32];
    int s = blockIdx.x;
    float* gr = g + (long long)s * hidden;
    const float* yr = y + (long long)s * hidden;
    float acc = 0.f;
    for (int j = threadIdx.x; j < hidden; j += blockDim.x) acc += gr[j] * (yr[j] + bd[j]);
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
        float t = 0.f;
        for (int i = 0; i < (int)(blockDim.x >> 5); i++) t += part[i];
        dw[s] = t;
    }
    float ws = w[s];
    for (int j = threadIdx.x; j < hidden; j += blockDim.x) gr[j] *= ws;
}

// dh (written over h, which holds gate_up outputs with bias) from da.
extern "C" __global__ void ref_act_bwd(float* h, const float* da, int ns, int inter, int kind) {
    int s = blockIdx.y;
    for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < inter; j += gridDim.x * blockDim.x) {
        float* hr = h + (long long)s * 2 * inter;
        float dg, du;
        swiglu_bwd(hr[j], hr[inter + j], da[(long long)s * inter + j], kind, &dg, &du);
        hr[j] = dg;
        hr[inter + j] = du;
    }
}

// dst[j] += sum over rows of src[r, j]; blockIdx.y takes 256 rows.
extern "C" __global__ void colsum_f32(const float* src, int rows, int cols, float* dst) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= cols) return;
    int r0 = blockIdx.y * 256, r1 = r0 + 256 < rows ? r0 + 256 : rows;
    float acc = 0.f;
    for (int r = r0; r < r1; r++) acc += src[(long long)r * cols + j];
    atomicAdd(&dst[j], acc);
}

// dst[row[s], :] += src[s, :] (the sampled tokens' dX, copy by copy).
extern "C" __global__ void scatter_add_f32(const float* src, const int* row, int ns, int hidden,
                                           float* dst) {
    int s = blockIdx.y;
    for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < hidden; j += gridDim.x * blockDim.x)
        atomicAdd(&dst[(long long)row[s] * hidden + j], src[(long long)s * hidden + j]);
}

// acc[0] += sum (got - ref)^2, acc[1] += sum ref^2 (got bf16, ref fp32).
extern "C" __global__ void err_sums(const bf16_t* got, const float* ref, long long n,
                                    double* acc) {
    double a = 0.0, b = 0.0;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        double g = bf2f(got[i]), r = ref[i];
        a += (g - r) * (g - r);
        b += r * r;
    }
    for (int o = 16; o > 0; o >>= 1) {
        a += __shfl_xor_sync(0xffffffffu, a, o);
        b += __shfl_xor_sync(0xffffffffu, b, o);
    }
    if ((threadIdx.x & 31) == 0) {
        atomicAdd(&acc[0], a);
        atomicAdd(&acc[1], b);
    }
}
