#pragma once

// A real HTTP/1.1 upstream for tests and benchmarks that implements the reference APIs of
// /work/shared/reference-apis.md: A (users, query-list multi-get), B (activities, batch GET with
// per-item status), and the write APIs C (abilities), D (progress events), E (documents) and
// F (goals), each with its single endpoints and its batch endpoint over an in-memory store; plus
// a few passthrough helpers (/echo, /large, /status, /set-cookie). Beast stays in the .cpp so
// that test files including this header compile fast.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>
#include <iterator>

namespace batchgate::mock {

/// One request as the mock received it.
struct recorded_call {
  std::string method;  // "GET", "POST", ...
  std::string target;  // path and query, as sent
  std::string path;    // target without the query, not decoded
  std::string body;
  std::map<std::string, std::string> headers;  // lower-case names; repeats joined with ", "
};

/// Misbehaviour of the batch endpoints (`GET /users?...`, `POST /api/v1/batch/get`, and the
/// batch endpoints of C–F).
enum class fault {
  none,
  status_500,        // 500 {"error":"boom"}
  stall,             // never answer; the connection stays open until stop()
  garbage,           // 200 with body `{not json`
  deep_json,         // 200 with a valid JSON body nested 100,000 arrays deep (200 KB)
  close_connection,  // close the socket without answering
};

/// Kinds of random per-call fault (mock_options::fault_rate), for the soak. "after" kinds run
/// the call first (a write is applied) and then fail to deliver the answer, as a real upstream
/// whose connection dies after its commit does.
enum class random_fault : unsigned {
  reset,           // RST instead of an answer; nothing applied
  reset_after,     // the call is applied, then RST
  close,           // FIN without an answer; nothing applied
  stall,           // never answer (until the peer closes); nothing applied
  stall_after,     // applied, then never answer
  late,            // applied, answered after `stall_for` (past the gateway's timeout)
  garbage,         // 200 `{not json`; nothing applied
  truncated,       // applied, then half of the answer's body and close
  status_429,      // 429 with `Retry-After: 0`; nothing applied
  status_500,      // 500 {"error":"boom"}; nothing applied
  status_503,      // 503 {"error":"unavailable"}; nothing applied
  slow,            // applied, answered after a random 1 ms .. `slow_max`
  // Protocol violations, not in the default kinds: the answer, then a second, unrequested one
  // (the same answer with the caller's Authorization replaced by "intruder"), in the same write
  // or 5 ms later on the idle keep-alive connection.
  extra,
  extra_late,
  count_
};
constexpr std::string_view random_fault_names[] = {
    "reset", "reset_after", "close", "stall", "stall_after", "late",
    "garbage", "truncated", "429", "500", "503", "slow", "extra", "extra_late"};
constexpr std::uint32_t default_fault_kinds = (1u << static_cast<unsigned>(random_fault::extra)) - 1;
static_assert(std::size(random_fault_names) == static_cast<std::size_t>(random_fault::count_));

struct mock_options {
  std::string address = "127.0.0.1";
  std::uint16_t port = 0;  // 0 = ephemeral
  unsigned threads = 1;
  std::chrono::microseconds latency{0};  // added to every call (async timer, not sleep)
  unsigned max_concurrent = 0;           // 0 = unlimited; more calls queue (FIFO) for a slot
  std::size_t user_count = 1000;         // users 1..N exist; activities a1..aN exist
  // C: a single `PATCH .../abilities/{id}` gets 429 (Retry-After: 1) when more than this many
  // single PATCHes were handled within the last `single_rate_window` (itself included).
  // 0 = no limit.
  // (Batch limits are fixed: D 25 events / 65,536 bytes, 413 beyond either; E 100 operations
  // (400 beyond) / 10,000,000 bytes (413 beyond).)
  unsigned single_rate_limit = 0;
  std::chrono::milliseconds single_rate_window{100};
  // A keep-alive connection with no new request for this long is closed. 0 = never.
  std::chrono::milliseconds idle_close{0};
  // Keep every request for calls()/count(). The standalone binary turns it off: nobody can read
  // them there, and a long benchmark or soak would grow by every request's body.
  bool record_calls = true;

  // --- Soak options; all off by default. ---
  // Each call (any endpoint but /__soak/state) draws a fault with this probability, one of
  // `fault_kinds` (bit i = random_fault i) with equal weight, from a generator seeded with
  // `fault_seed`. Applies on top of set_fault().
  double fault_rate = 0;
  std::uint64_t fault_seed = 1;
  std::uint32_t fault_kinds = default_fault_kinds;
  std::chrono::milliseconds stall_for{3000};  // random_fault::late
  std::chrono::milliseconds slow_max{200};    // random_fault::slow
  // Items of A and B, and the abilities of C, carry "owner": <the call's Authorization>.
  bool tag_owner = false;
  // Serve GET /__soak/state: what C and D applied and the abilities of C (write_apis::applied()),
  // plus "calls": the calls received so far (the state calls excepted) by endpoint, as
  // {"abilities_batch":n,"abilities_single":n,...,"other":n} (write_apis::endpoint_name()).
  bool state_endpoint = false;
};

/// C: one ability of one character. Abilities start at 0/0 and exist once written.
struct ability_state {
  std::int64_t score = 0;
  std::int64_t experience_points = 0;
  friend bool operator==(const ability_state&, const ability_state&) = default;
};

/// E: one stored document.
struct document_state {
  std::string title;
  std::string content;
  std::uint64_t version = 0;
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
  /// Forgets the recorded calls, resets max_observed_concurrency to the current level, and
  /// empties the stores of C–F (abilities, seen event ids, documents, goals, id counters,
  /// rate-limit hook and counter).
  void clear();

  void set_fault(fault f);
  /// From now on every call waits, holding its concurrency slot and after its latency, until
  /// release_held(): a call that stays in flight exactly as long as the test needs (callers
  /// arriving meanwhile, a deadline passing), with no timing in the test.
  void hold();
  /// Lets every held call (and every later one, until the next hold()) go on to its answer.
  /// A released call whose resumption has not run yet when hold() is called again is held
  /// again. Not to be called concurrently with stop().
  void release_held();
  /// Calls waiting in hold() now.
  std::size_t held() const;

  /// Peak number of calls being handled at once: holding a slot, i.e. from the end of any
  /// queueing until the answer is ready (the latency timer included, the write excluded).
  std::size_t max_observed_concurrency() const;

  // --- Write APIs C–F: test hooks and state. ---

  /// D: the next `calls` batch calls (`POST /api/client/progress/batch`) are answered
  /// `429 {"error":"rate limited"}` with `Retry-After: <retry_after>` (delay-seconds or an HTTP-date).
  void set_progress_rate_limit(std::size_t calls, std::string retry_after = "0");
  /// 429s answered since clear(): C single calls over the limit and D batch calls of the hook.
  std::size_t rate_limited_count() const;
  /// E: stores document `doc_id` in workspace `ws` with that version (title "seeded <doc_id>").
  void seed_document(const std::string& ws, const std::string& doc_id, std::uint64_t version);
  /// F: stores goal `goal_id` of organisation `org` (title "seeded <goal_id>").
  void seed_goal(const std::string& org, const std::string& goal_id, const std::string& period_id,
                 const std::string& type = "performance", double weight = 10);

  std::optional<ability_state> ability(std::string_view character_id, std::int64_t ability_id) const;
  bool progress_event_seen(std::string_view client_event_id) const;
  std::optional<document_state> document(std::string_view ws, std::string_view doc_id) const;
  /// F: the stored goal as JSON text, or nullopt.
  std::optional<std::string> goal(std::string_view org, std::string_view goal_id) const;

  void stop();

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace batchgate::mock
