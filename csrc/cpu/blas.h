// Row-major GEMM on top of the Fortran BLAS that libtorch_cpu exports (MKL's sgemm_/dgemm_ in the
// official x86-64 wheels). Declared weak: where a torch build exports no BLAS, a plain loop is used.
#pragma once
#include <cstdint>

extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c, const int* ldc)
    __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc) __attribute__((weak));
}

namespace agentattn::blas {

inline bool have_blas() { return sgemm_ != nullptr && dgemm_ != nullptr; }

// C[M,N] = alpha * op(A)[M,K] op(B)[K,N] + beta * C, all row-major; op = transpose when the flag is set
// (A stored K x M with leading dim lda when transA, else M x K).
template <typename T>
inline void gemm_loop(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda, const T* B,
                      int64_t ldb, T beta, T* C, int64_t ldc) {
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      T acc = 0;
      for (int64_t p = 0; p < K; ++p) {
        const T x = ta ? A[p * lda + i] : A[i * lda + p];
        const T y = tb ? B[j * ldb + p] : B[p * ldb + j];
        acc += x * y;
      }
      C[i * ldc + j] = alpha * acc + (beta == T(0) ? T(0) : beta * C[i * ldc + j]);
    }
  }
}

template <typename T>
void gemm_rm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda, const T* B,
             int64_t ldb, T beta, T* C, int64_t ldc);

// Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands, keep the flags.
template <>
inline void gemm_rm<float>(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                           const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (!have_blas() || K == 0) return gemm_loop(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  const char tA = tb ? 'T' : 'N', tB = ta ? 'T' : 'N';
  const int m = (int)N, n = (int)M, k = (int)K, la = (int)ldb, lb = (int)lda, lc = (int)ldc;
  sgemm_(&tA, &tB, &m, &n, &k, &alpha, B, &la, A, &lb, &beta, C, &lc);
}

template <>
inline void gemm_rm<double>(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
                            int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (!have_blas() || K == 0) return gemm_loop(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  const char tA = tb ? 'T' : 'N', tB = ta ? 'T' : 'N';
  const int m = (int)N, n = (int)M, k = (int)K, la = (int)ldb, lb = (int)lda, lc = (int)ldc;
  dgemm_(&tA, &tB, &m, &n, &k, &alpha, B, &la, A, &lb, &beta, C, &lc);
}

}  // namespace agentattn::blas
