# shellcheck shell=bash
# Sourced by the CPU launch scripts (`source launch/cpu_env.sh`): the process environment that
# CPU training runs fastest in. Sets nothing the caller already set.
#
# tcmalloc: XLA:CPU allocates each step's large buffers afresh; glibc's malloc serves them with
# mmap and hands them back with munmap, so every step first-touches (page-faults and zeroes) its
# buffers again. tcmalloc keeps freed memory for the next step (docs/benchmarks.md, training
# loop). launch/install.sh installs it (Debian: libtcmalloc-minimal4).
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
if [ -z "${LD_PRELOAD:-}" ]; then
  for _lib in /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 \
      /usr/lib/*/libtcmalloc_minimal.so.4; do
    if [ -f "$_lib" ]; then
      export LD_PRELOAD="$_lib"
      # tcmalloc reports every allocation over 1 GiB on stderr by default; the step has several.
      _quiet=1099511627776  # 1 TiB
      export TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD="${TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD:-$_quiet}"
      break
    fi
  done
  unset _lib _quiet
fi
