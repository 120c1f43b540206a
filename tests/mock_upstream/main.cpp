// batchgate-mock-upstream: the reference APIs A–F as a standalone server, for the quick
// start, the examples and the benchmarks. Logs nothing per request; exits 0 on SIGINT or SIGTERM.

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <optional>
#include <string>
#include <string_view>

#include <pthread.h>

#include "tests/mock_upstream/mock_upstream.hpp"

namespace {

constexpr const char* usage =
    "usage: batchgate-mock-upstream [options]\n"
    "  --address A         listen address (default 127.0.0.1)\n"
    "  --port N            listen port, 0 = ephemeral (default 9000)\n"
    "  --threads N         io threads (default 1)\n"
    "  --latency D         added to every call: 2ms, 500us, 1s (bare number = ms; default 0)\n"
    "  --max-concurrent N  calls handled at once, more queue FIFO; 0 = unlimited (default 0)\n"
    "  --users N           users 1..N and activities a1..aN exist (default 1000)\n"
    "  --single-rate-limit N  C: single ability PATCHes beyond N within 100 ms get 429;\n"
    "                      0 = off (default 0)\n"
    "Fault soak (all off by default):\n"
    "  --fault-rate R      each call draws a random fault with probability R (0..1)\n"
    "  --fault-seed N      seed of the fault generator (default 1)\n"
    "  --fault-kinds LIST  comma list of: reset, reset_after, close, stall, stall_after, late,\n"
    "                      garbage, truncated, 429, 500, 503, slow (default: these), and the\n"
    "                      protocol violations extra, extra_late (a second, unrequested answer\n"
    "                      with another owner, at once or 5 ms later); *_after, late,\n"
    "                      truncated, slow and extra* apply the call (a write) before failing\n"
    "  --stall-for D       how late a `late` answer comes (default 3s)\n"
    "  --slow-max D        a `slow` answer comes after 1ms..D (default 200ms)\n"
    "  --tag-owner         items of A, B and abilities of C carry \"owner\": <Authorization>\n"
    "  --state-endpoint    serve GET /__soak/state: C ops (by data.opId) and D events applied,\n"
    "                      C abilities, and the calls received by endpoint (\"calls\")\n"
    "  --help              this text\n"
    "Endpoints: GET /users/{id}, GET /users?ids=1,2 | ?id=1&id=2,\n"
    "  GET /api/v1/activities/{id}[?fields=..], POST /api/v1/batch/get,\n"
    "  PATCH /api/characters/{cid}/abilities/{aid}, POST /api/characters/{cid}/abilities/batch,\n"
    "  POST /api/client/progress, POST /api/client/progress/batch,\n"
    "  POST /api/v1/workspaces/{ws}/documents, PUT|DELETE /api/v1/workspaces/{ws}/documents/{id},\n"
    "  POST /api/v1/documents/batch,\n"
    "  POST /api/v1/org/{org}/goals, PUT /api/v1/org/{org}/goals/{id},\n"
    "  POST /api/v1/org/{org}/goals/batch-save,\n"
    "  ANY /echo..., GET /large?bytes=N, GET /status/{code}, GET /set-cookie\n";

std::optional<unsigned long long> parse_unsigned(std::string_view s) {
  if (s.empty() || s.find_first_not_of("0123456789") != std::string_view::npos) return std::nullopt;
  try {
    return std::stoull(std::string(s));
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

std::optional<std::chrono::microseconds> parse_duration(std::string_view s) {
  auto digits_end = s.find_first_not_of("0123456789");
  auto value = parse_unsigned(s.substr(0, digits_end));
  if (!value) return std::nullopt;
  std::string_view unit = digits_end == std::string_view::npos ? "ms" : s.substr(digits_end);
  if (unit == "us") return std::chrono::microseconds(*value);
  if (unit == "ms") return std::chrono::milliseconds(*value);
  if (unit == "s") return std::chrono::seconds(*value);
  return std::nullopt;
}

[[noreturn]] void bad_usage(const std::string& why) {
  std::cerr << "batchgate-mock-upstream: " << why << "\n" << usage;
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  batchgate::mock::mock_options options;
  options.port = 9000;
  options.record_calls = false;  // calls() is for in-process tests; here it would only grow

  for (int i = 1; i < argc; ++i) {
    std::string_view flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      std::cout << usage;
      return 0;
    }
    if (flag == "--tag-owner") {
      options.tag_owner = true;
      continue;
    }
    if (flag == "--state-endpoint") {
      options.state_endpoint = true;
      continue;
    }
    if (i + 1 >= argc) bad_usage("missing value for " + std::string(flag));
    std::string_view value = argv[++i];
    auto number = [&](unsigned long long max) {
      auto n = parse_unsigned(value);
      if (!n || *n > max) bad_usage("bad value for " + std::string(flag) + ": " + std::string(value));
      return *n;
    };
    if (flag == "--address") {
      options.address = std::string(value);
    } else if (flag == "--port") {
      options.port = static_cast<std::uint16_t>(number(65535));
    } else if (flag == "--threads") {
      options.threads = static_cast<unsigned>(number(1024));
      if (options.threads == 0) bad_usage("--threads must be at least 1");
    } else if (flag == "--latency") {
      auto d = parse_duration(value);
      if (!d) bad_usage("bad duration for --latency: " + std::string(value));
      options.latency = *d;
    } else if (flag == "--max-concurrent") {
      options.max_concurrent = static_cast<unsigned>(number(1u << 20));
    } else if (flag == "--single-rate-limit") {
      options.single_rate_limit = static_cast<unsigned>(number(1u << 20));
    } else if (flag == "--fault-rate") {
      char* end = nullptr;
      const std::string text(value);
      const double rate = std::strtod(text.c_str(), &end);
      if (text.empty() || *end != '\0' || !(rate >= 0 && rate <= 1))
        bad_usage("bad value for --fault-rate: " + text);
      options.fault_rate = rate;
    } else if (flag == "--fault-seed") {
      options.fault_seed = number(~0ull);
    } else if (flag == "--fault-kinds") {
      options.fault_kinds = 0;
      std::string_view rest = value;
      while (!rest.empty()) {
        auto comma = rest.find(',');
        auto name = rest.substr(0, comma);
        const auto* names = batchgate::mock::random_fault_names;
        const auto n = std::size(batchgate::mock::random_fault_names);
        auto it = std::find(names, names + n, name);
        if (it == names + n) bad_usage("unknown fault kind " + std::string(name));
        options.fault_kinds |= 1u << (it - names);
        rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
      }
    } else if (flag == "--stall-for" || flag == "--slow-max") {
      auto d = parse_duration(value);
      if (!d) bad_usage("bad duration for " + std::string(flag) + ": " + std::string(value));
      (flag == "--stall-for" ? options.stall_for : options.slow_max) =
          std::chrono::duration_cast<std::chrono::milliseconds>(*d);
    } else if (flag == "--users") {
      options.user_count = static_cast<std::size_t>(number(1ull << 40));
    } else {
      bad_usage("unknown option " + std::string(flag));
    }
  }

  // Block the signals before any thread starts so that only sigwait below receives them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  try {
    batchgate::mock::mock_upstream server(options);
    std::cout << "mock upstream listening on " << options.address << ":" << server.port()
              << std::endl;
    int received = 0;
    sigwait(&signals, &received);
    server.stop();
  } catch (const std::exception& e) {
    std::cerr << "batchgate-mock-upstream: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
