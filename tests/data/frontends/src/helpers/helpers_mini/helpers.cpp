#include <pybind11/pybind11.h>

#ifdef HELPERS_BREAK
#error "helpers.cpp does not compile with HELPERS_BREAK"
#endif

static long long build_sample_index(long long documents, long long seq_length) {
    return documents * seq_length + 1;
}

PYBIND11_MODULE(helpers_cpp, m) {
    m.def("build_sample_index", &build_sample_index);
}
