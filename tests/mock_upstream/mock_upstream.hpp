#pragma once

// A real HTTP/1.1 upstream for tests and benchmarks that implements reference APIs A (users,
// query-list multi-get) and B (activities, batch GET with per-item status), plus a few
// passthrough helpers (/echo, /large, /status, /set-cookie). Beast stays in the .cpp so that test
// files including this header compile fast.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace batchgate::mock {

/// One request as the mock received it.
struct recorded_call {
  std::string method;  // "GET", "POST", ...
  std::string target;  // path and query, as sent
  std::string path;    // target without the query, not decoded
  std::string body;
  std::map<std::string, std::string> headers;  // lower-case names; repeats joined with ", "
};

/// Misbehaviour of the batch endpoints (`GET /users?...`, `POST /api/v1/batch/get`).
enum class fault {
  none,
  status_500,        // 500 {"error":"boom"}
  stall,             // never answer; the connection stays open until stop()
  garbage,           // 200 with body `{not json`
  close_connection,  // close the socket without answering
};

struct mock_options {
  std::string address = "127.0.0.1";
  std::uint16_t port = 0;  // 0 = ephemeral
  unsigned threads = 1;
  std::chrono::microseconds latency{0};  // added to every call (async timer, not sleep)
  unsigned max_concurrent = 0;           // 0 = unlimited; more calls queue (FIFO) for a slot
  std::size_t user_count = 1000;         // users 1..N exist; activities a1..aN exist
};

/// The mock server. Owns its io_context and `threads` threads; starts serving in the
/// constructor (throws if it cannot bind) and stops in stop() or the destructor, which join
/// the threads and close every connection, stalled ones included. All members are thread-safe.
class mock_upstream {
 public:
  explicit mock_upstream(mock_options options = {});
  ~mock_upstream();
  mock_upstream(const mock_upstream&) = delete;
  mock_upstream& operator=(const mock_upstream&) = delete;

  std::uint16_t port() const;

  /// Every request received, in arrival order (recorded before any latency or queueing).
  std::vector<recorded_call> calls() const;
  /// Calls with that method and exact path (no query).
  std::size_t count(std::string_view method, std::string_view path) const;
  /// Forgets the recorded calls and resets max_observed_concurrency to the current level.
  void clear();

  void set_fault(fault f);
  /// Peak number of calls being handled at once: holding a slot, i.e. from the end of any
  /// queueing until the answer is ready (the latency timer included, the write excluded).
  std::size_t max_observed_concurrency() const;

  void stop();

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace batchgate::mock
