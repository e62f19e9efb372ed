// The gate_up GEMM of expert units with the activation in its epilogue: an
// own Hopper (sm_90a) kernel, compiled by NVRTC apart from kernels/moe.cu
// (which builds for any card). cuBLASLt has no clamped-SwiGLU epilogue, and
// the activation as a kernel between the two GEMMs cost 1.1-1.9 ms of a
// 10-11 ms gpt-oss layer (reports/replay-floor): here the gate_up output
// never leaves the registers.
//
// One launch serves up to FUSED_UNITS units (a grouped GEMM): unit u's rows
// x_u [rows_u x D] times its expert's gate_up weight W_u [D x 2I] (row-major,
// gate columns [0, I), up columns [I, 2I)), plus its bias, through the
// activation, into act_u [rows_u x I]. Tiles of 128 rows x 128 activation
// columns; a tile's GEMM columns are gate [g0, g0+128) and up [I+g0, I+g0+128),
// so each thread holds a gate value and its up value in the same registers.
//
// Persistent warp-specialised schedule: one CTA per SM walks the launch's
// tiles (all units', in groups of FG_GROUP row tiles taken column by column,
// so the CTAs of a wave share rows and weight columns in L2: fg_locate). Warp 0 (one thread) loads K-slices of 64 through TMA into
// a ring of FG_STAGES stages. Warpgroups 1 and 2 each multiply 64 of the
// tile's rows with wgmma (m64n256k16: A from shared memory K-major, B
// MN-major, both with the 128-byte swizzle TMA writes), keeping one k-slice
// in flight; at the tile's end they round the gate and up sums to bf16 (as
// a GEMM writing bf16 would) into a staging buffer and go on to the next
// tile. Warps 1-3 take the staged tile: bias, activation, 16-byte stores.
// So the activation runs beside the next tile's MMAs instead of between
// them. Rows past a unit's end and K past D are zeros from TMA's bounds;
// columns past I are not stored.
//
// The same schedule serves the down GEMM (`down_grouped`): act_u [rows_u x
// I] times the down weight W_u [I x D] into out_u [rows_u x D], in tiles of
// 128 x FD_TN (m64n192k16; its smaller stages leave room for FD_STAGES),
// staged and stored by the epilogue warps. Under cuBLASLt each unit's down
// GEMM was a launch of its own, with a tail of its own: at 2,048 rows a
// unit it ran at about 610 TFLOP/s where the gate_up ran at 640-770. Units
// of DOWN_GROUPED_ROWS rows or more keep cuBLASLt's down GEMM, faster there
// (src/gpu/fused.rs).
//
// Matches src/gpu/fused.rs's FusedUnits. Compiled after kernels/bf16_act.cuh
// (conversions, the activation), which the Rust side prepends.

typedef unsigned int u32;

#define FUSED_UNITS 16
#define FG_BM 128
#define FG_BK 64
#define FG_TN 128
#define FG_STAGES 3
#define FG_A_BYTES (FG_BM * FG_BK * 2)
#define FG_B_BLOCK (64 * FG_BK * 2)
#define FG_EPI_THREADS 96
// the down GEMM: 128 x 192 tiles (D = 2,880 is 15 of them), four stages
#define FD_TN 192
#define FD_STAGES 4

// A CUtensorMap (opaque, 128 bytes, 64-byte aligned).
struct __align__(64) TmaMap {
    u64 v[16];
};

struct FusedUnits {
    TmaMap a[FUSED_UNITS];  // x_u: dims {D, rows_u}, box {64, 128}, 128B swizzle
    TmaMap b[FUSED_UNITS];  // W_u: dims {2I, D}, box {64, 64}, 128B swizzle
    u64 out[FUSED_UNITS];   // act_u, I values a row
    u64 bias[FUSED_UNITS];  // gate_up bias, 2I values
    int rows[FUSED_UNITS];
    int tile_end[FUSED_UNITS];  // tiles of units 0..=u
    int n, d, inter, kind;
};

__device__ __forceinline__ u32 smem_u32(const void* p) {
    u32 a;
    asm("{\n.reg .u64 t;\ncvta.to.shared.u64 t, %1;\ncvt.u32.u64 %0, t;\n}\n"
        : "=r"(a)
        : "l"(p));
    return a;
}

__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count));
}
__device__ __forceinline__ void mbar_expect_tx(u32 bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void mbar_arrive(u32 bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}
__device__ __forceinline__ bool mbar_try(u32 bar, u32 parity) {
    u32 ok;
    asm volatile(
        "{\n.reg .pred P;\n"
        "mbarrier.try_wait.parity.shared::cta.b64 P, [%1], %2;\n"
        "selp.u32 %0, 1, 0, P;\n}\n"
        : "=r"(ok)
        : "r"(bar), "r"(parity)
        : "memory");
    return ok != 0;
}
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
    while (!mbar_try(bar, parity)) {
    }
}

// A 2-D box of `map` at element coordinates (c0 inner, c1 outer) into
// shared memory at dst; its bytes complete a transaction on bar.
__device__ __forceinline__ void tma_load_2d(u32 dst, const TmaMap* map, int c0, int c1, u32 bar) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
        " [%0], [%1, {%2, %3}], [%4];" ::"r"(dst),
        "l"((u64)map), "r"(c0), "r"(c1), "r"(bar)
        : "memory");
}

// Shared-memory matrix descriptors (PTX ISA, wgmma "matrix descriptor").
// A: K-major rows of 128 bytes, 128B swizzle, 8-row groups 1024 bytes apart.
__device__ __forceinline__ u64 desc_a(u32 addr) {
    return (u64)((addr & 0x3FFFF) >> 4) | ((u64)1 << 16) | ((u64)(1024 >> 4) << 32) | (1ull << 62);
}
// B: MN-major, 128B swizzle: 64-column blocks FG_B_BLOCK bytes apart (the
// leading offset), 8-row groups of K 1024 bytes apart (the stride offset).
__device__ __forceinline__ u64 desc_b(u32 addr) {
    return (u64)((addr & 0x3FFFF) >> 4) | ((u64)(FG_B_BLOCK >> 4) << 16) |
           ((u64)(1024 >> 4) << 32) | (1ull << 62);
}

__device__ __forceinline__ void wgmma_fence() {
    asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}
// Keep the compiler from moving accumulator reads above a wgmma wait.
template <int N>
__device__ __forceinline__ void fence_acc(float* d) {
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+f"(d[i])::"memory");
}

// D (+)= A B for one warpgroup: A 64 x 16 (K-major), B 16 x 256 (MN-major).
__device__ __forceinline__ void wgmma_m64n256k16(float* d, u64 da, u64 db, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
        "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
        "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
        "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
        "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
        "}, %128, %129, p, 1, 1, 0, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
          "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
          "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),
          "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),
          "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),
          "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),
          "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]),
          "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),
          "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
        : "l"(da), "l"(db), "r"(accumulate));
}

// The same for B 16 x 192 (the down GEMM's tiles).
__device__ __forceinline__ void wgmma_m64n192k16(float* d, u64 da, u64 db, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %98, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n192k16.f32.bf16.bf16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
        "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
        "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95"
        "}, %96, %97, p, 1, 1, 0, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
          "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
          "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),
          "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),
          "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95])
        : "l"(da), "l"(db), "r"(accumulate));
}

// Which unit tile t belongs to, and its row and column tile there, with
// `ntiles` column tiles a unit. Within a unit, tiles go in groups of
// FG_GROUP row tiles, each group column by column: a wave of CTAs then
// reads a few MB of rows and of weights, which stay in L2, where rows
// fastest over a large unit would read every row once per column tile
// from memory.
#define FG_GROUP 16
__device__ __forceinline__ void fg_locate(const FusedUnits& p, int ntiles, int t, int* u, int* mt,
                                          int* nt) {
    int k = 0;
    while (k + 1 < p.n && t >= p.tile_end[k]) k++;
    int start = k == 0 ? 0 : p.tile_end[k - 1];
    int mtiles = (p.rows[k] + FG_BM - 1) / FG_BM;
    int l = t - start;
    int g = l / (FG_GROUP * ntiles);
    int rem = l - g * FG_GROUP * ntiles;
    int gm = min(FG_GROUP, mtiles - g * FG_GROUP);
    *u = k;
    *nt = rem / gm;
    *mt = g * FG_GROUP + (rem - *nt * gm);
}

// Two floats to a bf16 pair (lo in the low half), round to nearest even.
__device__ __forceinline__ u32 pack_bf16x2(float lo, float hi) {
    u32 v;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(v) : "f"(hi), "f"(lo));
    return v;
}

// Byte offset in a staged buffer of rows of ROW bytes of row r's 16-byte
// chunk i (8 columns), chunks XOR-swizzled by row so that a warp's stores
// of 8 rows hit distinct banks (ROW is a multiple of 128 bytes).
template <int ROW>
__device__ __forceinline__ u32 staged_at(int r, int i) {
    return (u32)(r * ROW + ((i ^ (r & 7)) << 4));
}

__device__ __forceinline__ void st_shared_u32(u32 addr, u32 v) {
    asm volatile("st.shared.b32 [%0], %1;" ::"r"(addr), "r"(v) : "memory");
}
__device__ __forceinline__ uint4 ld_shared_v4(u32 addr) {
    uint4 v;
    asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "r"(addr)
                 : "memory");
    return v;
}
__device__ __forceinline__ uint4 ldg_v4(const bf16_t* p) {
    uint4 v;
    asm("ld.global.nc.v4.b32 {%0, %1, %2, %3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(p));
    return v;
}

// What a launch computes: the gate_up GEMM through bias and activation;
// the same without the epilogue's work (a measurement of the epilogue's
// cost only: the MMAs and the staging still run); or the down GEMM, act_u
// [rows_u x I] times W_u [I x D] into out_u [rows_u x D] (no bias: the
// combine adds it), in tiles of 128 rows x FD_TN columns.
#define MODE_ACT 0
#define MODE_NOEPI 1
#define MODE_DOWN 2

template <int MODE>
__device__ __forceinline__ void grouped_body(const FusedUnits& p) {
    constexpr bool DOWN = MODE == MODE_DOWN;
    constexpr int WN = DOWN ? FD_TN : 2 * FG_TN;  // wgmma N, a warpgroup's columns
    constexpr int TN = DOWN ? FD_TN : FG_TN;      // output columns a tile
    constexpr int NACC = WN / 2;                  // accumulators a thread
    constexpr int BLOCKS = WN / 64;               // 64-column blocks of B a stage
    constexpr int STAGES = DOWN ? FD_STAGES : FG_STAGES;
    constexpr int STAGE = FG_A_BYTES + BLOCKS * FG_B_BLOCK;
    constexpr int ROW = WN * 2;                   // staged bytes a row (gate_up: both halves)
    constexpr int CHUNKS = TN / 8;                // 16-byte chunks of output a row
    extern __shared__ unsigned char fg_smem[];
    u32 base = (smem_u32(fg_smem) + 1023u) & ~1023u;  // the 128B swizzle's 1024-byte atoms
    u32 staged_g = base + STAGES * STAGE;
    // gate_up: gate in the first half of the staging buffer, up in the second
    u32 staged_u = staged_g + FG_BM * TN * 2;
    u32 full = staged_g + FG_BM * ROW;
    u32 empty = full + STAGES * 8;
    u32 staged = empty + STAGES * 8;  // the consumers filled the staging buffer
    u32 drained = staged + 8;         // the epilogue warps emptied it
    int wg = threadIdx.x >> 7;
    int tid = threadIdx.x & 127;
    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; s++) {
            mbar_init(full + 8 * s, 1);
            mbar_init(empty + 8 * s, 2);
        }
        mbar_init(staged, 256);
        mbar_init(drained, FG_EPI_THREADS);
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    int total = p.tile_end[p.n - 1];
    int kdim = DOWN ? p.inter : p.d;
    int nout = DOWN ? p.d : p.inter;
    int ntiles = (nout + TN - 1) / TN;
    int kblocks = (kdim + FG_BK - 1) / FG_BK;
    if (wg == 0 && tid == 0) {
        // the loader
        int s = 0;
        u32 ph = 0;
        for (int t = blockIdx.x; t < total; t += gridDim.x) {
            int u, mt, nt;
            fg_locate(p, ntiles, t, &u, &mt, &nt);
            const TmaMap* am = &p.a[u];
            const TmaMap* bm = &p.b[u];
            int n0 = nt * TN;
            for (int kb = 0; kb < kblocks; kb++) {
                mbar_wait(empty + 8 * s, ph ^ 1);
                u32 bar = full + 8 * s;
                mbar_expect_tx(bar, STAGE);
                u32 sa = base + s * STAGE;
                u32 sb = sa + FG_A_BYTES;
                int k0 = kb * FG_BK;
                tma_load_2d(sa, am, k0, mt * FG_BM, bar);
#pragma unroll
                for (int blk = 0; blk < BLOCKS; blk++) {
                    // gate_up: gate columns [n0, n0 + 128), then up [I + n0, ...)
                    int col = DOWN ? n0 + 64 * blk : (blk < 2 ? 0 : p.inter) + n0 + 64 * (blk & 1);
                    tma_load_2d(sb + blk * FG_B_BLOCK, bm, col, k0, bar);
                }
                if (++s == STAGES) {
                    s = 0;
                    ph ^= 1;
                }
            }
        }
        return;
    }
    if (wg == 0 && tid < 32) return;  // the loader warp's other lanes
    if (wg == 0) {
        // the epilogue warps: the staged tile to its rows (gate_up: through
        // bias and activation)
        int e = tid - 32;
        u32 ph = 0;
        for (int t = blockIdx.x; t < total; t += gridDim.x) {
            int u, mt, nt;
            fg_locate(p, ntiles, t, &u, &mt, &nt);
            mbar_wait(staged, ph);
            if (MODE != MODE_NOEPI || p.n > FUSED_UNITS) {
                int rows = p.rows[u];
                int n0 = nt * TN;
                const bf16_t* bias = (const bf16_t*)p.bias[u];
                bf16_t* out = (bf16_t*)p.out[u];
                int kind = p.kind;
                for (int item = e; item < FG_BM * CHUNKS; item += FG_EPI_THREADS) {
                    int r = item / CHUNKS, i = item - r * CHUNKS;
                    long long row = (long long)mt * FG_BM + r;
                    int j = n0 + 8 * i;
                    if (row >= rows || j >= nout) continue;
                    uint4 o;
                    if constexpr (DOWN) {
                        o = ld_shared_v4(staged_g + staged_at<ROW>(r, i));
                    } else {
                        uint4 g = ld_shared_v4(staged_g + staged_at<TN * 2>(r, i));
                        uint4 v = ld_shared_v4(staged_u + staged_at<TN * 2>(r, i));
                        uint4 bg = ldg_v4(bias + j);
                        uint4 bu = ldg_v4(bias + nout + j);
                        o.x = act_pair(g.x, v.x, bg.x, bu.x, kind);
                        o.y = act_pair(g.y, v.y, bg.y, bu.y, kind);
                        o.z = act_pair(g.z, v.z, bg.z, bu.z, kind);
                        o.w = act_pair(g.w, v.w, bg.w, bu.w, kind);
                    }
                    *(uint4*)(out + row * nout + j) = o;
                }
            }
            mbar_arrive(drained);
            ph ^= 1;
        }
        return;
    }
    // the consumers
    int c = wg - 1;
    int warp = tid >> 5, lane = tid & 31;
    float acc[NACC];
    int s = 0;
    u32 ph = 0, ph_drained = 0;
    for (int t = blockIdx.x; t < total; t += gridDim.x) {
        int prev = -1;
        for (int kb = 0; kb < kblocks; kb++) {
            mbar_wait(full + 8 * s, ph);
            u32 sa = base + s * STAGE + c * (64 * 128);
            u32 sb = base + s * STAGE + FG_A_BYTES;
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < FG_BK / 16; kk++) {
                int accumulate = (kb > 0 || kk > 0) ? 1 : 0;
                if constexpr (DOWN) {
                    wgmma_m64n192k16(acc, desc_a(sa + kk * 32), desc_b(sb + kk * 2048), accumulate);
                } else {
                    wgmma_m64n256k16(acc, desc_a(sa + kk * 32), desc_b(sb + kk * 2048), accumulate);
                }
            }
            wgmma_commit();
            if (prev >= 0) {
                wgmma_wait<1>();
                if (tid == 0) mbar_arrive(empty + 8 * prev);
            }
            prev = s;
            if (++s == STAGES) {
                s = 0;
                ph ^= 1;
            }
        }
        wgmma_wait<0>();
        fence_acc<NACC>(acc);
        if (tid == 0) mbar_arrive(empty + 8 * prev);
        // stage, rounded to bf16 (as a GEMM writing bf16 would): rows r and
        // r + 8 of this warpgroup's 64, columns 8i + 2(lane % 4) + {0, 1} of
        // acc[4i..] (gate_up: gate in acc[4i..], up in acc[64 + 4i..])
        mbar_wait(drained, ph_drained ^ 1);
        ph_drained ^= 1;
        int r = c * 64 + warp * 16 + (lane >> 2);
#pragma unroll
        for (int i = 0; i < CHUNKS; i++) {
#pragma unroll
            for (int h = 0; h < 2; h++) {
                if constexpr (DOWN) {
                    u32 at = staged_at<ROW>(r + 8 * h, i) + 4 * (lane & 3);
                    st_shared_u32(staged_g + at, pack_bf16x2(acc[4 * i + 2 * h], acc[4 * i + 2 * h + 1]));
                } else {
                    u32 at = staged_at<TN * 2>(r + 8 * h, i) + 4 * (lane & 3);
                    st_shared_u32(staged_g + at,
                                  pack_bf16x2(acc[4 * i + 2 * h], acc[4 * i + 2 * h + 1]));
                    st_shared_u32(staged_u + at, pack_bf16x2(acc[NACC / 2 + 4 * i + 2 * h],
                                                             acc[NACC / 2 + 4 * i + 2 * h + 1]));
                }
            }
        }
        mbar_arrive(staged);
    }
}

extern "C" __global__ void __launch_bounds__(384, 1)
    gate_up_act_fused(const __grid_constant__ FusedUnits p) {
    grouped_body<MODE_ACT>(p);
}
extern "C" __global__ void __launch_bounds__(384, 1)
    gate_up_act_fused_noepi(const __grid_constant__ FusedUnits p) {
    grouped_body<MODE_NOEPI>(p);
}
extern "C" __global__ void __launch_bounds__(384, 1)
    down_grouped(const __grid_constant__ FusedUnits p) {
    grouped_body<MODE_DOWN>(p);
}
