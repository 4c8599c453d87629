// Shared by shim.cpp, graph.cpp and engine.cpp: a C++ exception becomes a malloc'd message in
// `*err` (freed with `mn_free_error`, or the engine's `mn_engine_free_error`) and the function
// returns null.
#pragma once

#include <cstdlib>
#include <cstring>
#include <exception>

inline char* mn_copy_message(const char* what) {
  size_t n = std::strlen(what);
  char* out = static_cast<char*>(std::malloc(n + 1));
  if (out != nullptr) {
    std::memcpy(out, what, n + 1);
  }
  return out;
}

#define MN_PROTECT(...)                               \
  try {                                               \
    __VA_ARGS__                                       \
  } catch (const std::exception& e) {                 \
    *err = mn_copy_message(e.what());                 \
  } catch (...) {                                     \
    *err = mn_copy_message("unknown C++ exception");  \
  }
