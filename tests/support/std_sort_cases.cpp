// Generates tests/data/std_sort_cases.json: libstdc++'s std::sort on
// (value, index) pairs compared by value descending, the sort PyTorch's CPU
// `sort(descending=True)` runs (stable=False). Tie-heavy inputs of many
// sizes, so that the order equal values end in is pinned by the real
// library. "heap" is std::partial_sort over the whole range, the heapsort
// introsort falls back to past its depth limit. Build and run: g++ -O2 -o /tmp/ssc tests/support/std_sort_cases.cpp
// && /tmp/ssc > tests/data/std_sort_cases.json
#include <algorithm>
#include <cstdio>
#include <random>
#include <utility>
#include <vector>

int main() {
  std::mt19937_64 rng(20260129);
  std::printf("[");
  bool first_case = true;
  for (int c = 0; c < 600; ++c) {
    int n = 1 + (int)(rng() % (c < 300 ? 40 : 400));
    int distinct = 1 + (int)(rng() % (c % 3 == 0 ? 3 : (c % 3 == 1 ? 12 : 1000)));
    std::vector<std::pair<float, long>> v;
    for (int i = 0; i < n; ++i) v.push_back({(float)(rng() % distinct) * 0.5f, i});
    std::vector<float> vals;
    for (auto &p : v) vals.push_back(p.first);
    auto desc = [](const std::pair<float, long> &a, const std::pair<float, long> &b) {
      return a.first > b.first;
    };
    std::vector<std::pair<float, long>> h = v;
    std::partial_sort(h.begin(), h.end(), h.end(), desc);
    std::sort(v.begin(), v.end(), desc);
    std::printf("%s\n{\"values\":[", first_case ? "" : ",");
    first_case = false;
    for (int i = 0; i < n; ++i) std::printf("%s%g", i ? "," : "", vals[i]);
    std::printf("],\"order\":[");
    for (int i = 0; i < n; ++i) std::printf("%s%ld", i ? "," : "", v[i].second);
    std::printf("],\"heap\":[");
    for (int i = 0; i < n; ++i) std::printf("%s%ld", i ? "," : "", h[i].second);
    std::printf("]}");
  }
  std::printf("\n]\n");
  return 0;
}
