#!/usr/bin/env bash
# The test command: installs dependencies, checks the C++ formatting,
# builds, runs the tests of the
# code that parses untrusted bytes (codecs, update codec, chunk assembler,
# round engine, checkpoints, worker optimizer, IDX reader, the gRPC service
# and client, the PEM and token loaders and the token check, the bad-input
# table) under AddressSanitizer and UBSan, runs the libFuzzer targets for a
# bounded time (clang, build-fuzz, which also checks the thread-safety
# annotations), then every test under ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "== formatting (.clang-format) =="
scripts/check_format.sh
scripts/build.sh

echo "== AddressSanitizer + UBSan =="
SAN_TESTS=(codec_test update_codec_test chunk_assembler_test round_engine_test
           checkpoint_test worker_optimizer_test idx_reader_test
           server_service_test worker_client_test shard_link_test
           bad_input_test grpc_security_test service_auth_test
           thread_pool_test parameter_server_test update_parts_test
           worker_step_tiles_test chunk_streams_test)
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DEFFADAM_SANITIZE=ON -DEFFADAM_BUILD_BENCH=OFF >/dev/null
cmake --build build-asan -j "${JOBS:-2}" --target "${SAN_TESTS[@]}"
for t in "${SAN_TESTS[@]}"; do
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
    "build-asan/bin/$t" --gtest_brief=1
done

echo "== libFuzzer (clang): each target ${FUZZ_SECONDS:-20} s =="
cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_COMPILER=clang++ -DEFFADAM_FUZZ=ON -DEFFADAM_BUILD_BENCH=OFF \
  -DEFFADAM_FUZZ_SECONDS="${FUZZ_SECONDS:-20}" >/dev/null
# The clang build also checks the thread-safety annotations of the
# threaded libraries (-Werror=thread-safety, CMakeLists.txt).
cmake --build build-fuzz -j "${JOBS:-2}" --target fuzzers \
  effadam_server_service effadam_worker_client effadam_daemon_runtime
# One fuzzer at a time: each already keeps a core busy.
(cd build-fuzz && ctest -L fuzz --output-on-failure -j 1)

echo "== ctest =="
cd build
# chaos_ci (5-6 min) runs here; the longer `chaos` (label chaos) on its
# own, ctest -L chaos.
ctest --output-on-failure -j 2 --timeout 600 -LE chaos
