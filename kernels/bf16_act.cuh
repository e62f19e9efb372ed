// bf16 conversions and the expert activation, shared by kernels/moe.cu and
// kernels/hopper_gate_up.cu (the Rust side prepends this file to each), so
// the fused gate_up kernel's activation is the activation kernel's, bit for
// bit.

typedef unsigned short bf16_t;
typedef unsigned long long u64;

__device__ __forceinline__ float bf2f(bf16_t h) {
    return __uint_as_float(((unsigned int)h) << 16);
}

// Round to nearest even; NaN stays NaN.
__device__ __forceinline__ bf16_t f2bf(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16_t)(u >> 16);
}

// The same activation with the division as a fast reciprocal (2 ulp, far
// below bf16's rounding): an activation kernel is memory-bound only if its arithmetic
// per element stays small, and an IEEE division is a subroutine.
__device__ __forceinline__ float swiglu_fast(float g, float u, int kind) {
    if (kind == 0) {
        g = fminf(g, 7.0f);
        u = fminf(fmaxf(u, -7.0f), 7.0f);
        return (u + 1.0f) * __fdividef(g, 1.0f + __expf(-1.702f * g));
    }
    return __fdividef(g, 1.0f + __expf(-g)) * u;
}

// Activation of one bf16 pair (gate, up words) with the bias pair added.
__device__ __forceinline__ unsigned int act_pair(unsigned int gg, unsigned int uu,
                                                 unsigned int bg, unsigned int bu, int kind) {
    float g0 = bf2f(gg & 0xffff) + bf2f(bg & 0xffff);
    float g1 = bf2f(gg >> 16) + bf2f(bg >> 16);
    float u0 = bf2f(uu & 0xffff) + bf2f(bu & 0xffff);
    float u1 = bf2f(uu >> 16) + bf2f(bu >> 16);
    return (unsigned int)f2bf(swiglu_fast(g0, u0, kind)) |
           ((unsigned int)f2bf(swiglu_fast(g1, u1, kind)) << 16);
}

