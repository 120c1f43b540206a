// batchgate-write-bench: the load side of bench/writes.sh.
//
// Sends reference-API C single writes (`PATCH /api/characters/{c}/abilities/{a}`, increment or
// decrement with small deltas and a unique `data.opId`) over --connections keep-alive connections,
// each one write after another (closed loop), to a gateway or straight to the mock upstream. Then
// reads the mock's `GET /__soak/state` (mock --state-endpoint) and checks every write:
//   - answered 2xx: applied exactly once (0 = LOST, >1 = DOUBLED);
//   - answered 4xx: applied zero times;
//   - answered 5xx or not answered: "unknown" (counted; applied twice would still be DOUBLED);
//   - every (character, ability) it touched ends at its state before the run plus the deltas of
//     the operations the mock applied (by opId).
// The state is read before and after the run, so several runs can share one mock: applied
// counts, abilities and the mock's calls by endpoint are taken as differences.
//
// Prints a human-readable block, FAILURE lines, and one machine-readable `WRITE_RESULT k=v ...`
// line; exits 1 on any FAILURE, 2 on bad usage. Bounded by --deadline-ms per request and
// --max-seconds overall. One thread, one io_context.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include "tests/soak/simple_get.hpp"

namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using json = nlohmann::json;
using clock_type = std::chrono::steady_clock;
using namespace std::chrono_literals;

struct options {
  std::string host = "127.0.0.1";
  unsigned short port = 0;           // where the writes go: the gateway or the mock itself
  unsigned short upstream_port = 0;  // the mock (GET /__soak/state)
  std::uint64_t writes = 2000;
  unsigned connections = 200;
  unsigned characters = 20;
  unsigned abilities = 50;
  unsigned hot = 3;          // hot abilities per character: 1..hot
  unsigned hot_pct = 30;     // share of writes on a hot ability
  unsigned invalid_pct = 2;  // share of writes with action "explode" (the upstream answers 422)
  std::uint64_t seed = 1;
  std::string op_prefix = "w";  // opIds are <prefix>-<n>; one prefix per run sharing a mock
  std::string label = "writes";
  std::chrono::milliseconds deadline{10000};
  std::chrono::milliseconds settle{1000};  // wait after the last answer before reading the state
  std::chrono::seconds max_seconds{60};
  unsigned max_failure_lines = 20;
};

// One planned write and what became of it.
struct write_op {
  unsigned character = 0;
  unsigned ability = 0;
  bool valid = true;
  bool increment = true;
  std::int64_t score = 0;
  std::int64_t xp = 0;
  std::string id;  // data.opId
  std::string target;
  std::string body;
  // Outcome.
  bool sent = false;
  unsigned status = 0;  // 0: no answer
  std::string no_answer;  // why, when status == 0
  double latency_ms = 0;
  bool wrong_body = false;  // 2xx whose body is not this ability

  std::int64_t signed_score() const { return increment ? score : -score; }
  std::int64_t signed_xp() const { return increment ? xp : -xp; }
  std::string describe() const {
    return "op " + id + " (character " + std::to_string(character) + ", ability " + std::to_string(ability) + ", " +
           (valid ? (increment ? "increment" : "decrement") : "explode") + " score " + std::to_string(score) +
           " xp " + std::to_string(xp) + ")";
  }
};

std::vector<write_op> plan(const options& o) {
  std::mt19937_64 random(o.seed * 7919 + 11);
  auto pick = [&](std::uint64_t lo, std::uint64_t hi) {
    return std::uniform_int_distribution<std::uint64_t>(lo, hi)(random);
  };
  std::vector<write_op> ops(o.writes);
  for (std::uint64_t i = 0; i < o.writes; ++i) {
    write_op& w = ops[i];
    w.character = static_cast<unsigned>(pick(1, o.characters));
    w.ability = static_cast<unsigned>(pick(0, 99) < o.hot_pct ? pick(1, o.hot) : pick(1, o.abilities));
    w.valid = pick(0, 99) >= o.invalid_pct;
    w.increment = pick(0, 1) == 1;
    w.score = static_cast<std::int64_t>(pick(1, 5));
    w.xp = static_cast<std::int64_t>(pick(1, 50));
    w.id = o.op_prefix + "-" + std::to_string(i + 1);
    w.target = "/api/characters/" + std::to_string(w.character) + "/abilities/" + std::to_string(w.ability);
    w.body = std::string(R"({"action":")") + (w.valid ? (w.increment ? "increment" : "decrement") : "explode") +
             R"(","data":{"score":)" + std::to_string(w.score) + R"(,"experience_points":)" + std::to_string(w.xp) +
             R"(,"opId":")" + w.id + "\"}}";
  }
  return ops;
}

// ---------------------------------------------------------------------------------------------
// The closed loop: every connection sends the next unsent write, waits for its answer, repeats.

struct run_state {
  run_state(const options& o, std::vector<write_op>& w) : opts(o), ops(w) {}
  const options& opts;
  std::vector<write_op>& ops;
  net::io_context ioc{1};
  tcp::endpoint endpoint;
  std::size_t next = 0;
  clock_type::time_point stop_at;
  bool time_limited = false;
  std::uint64_t connect_errors = 0;
};

class connection : public std::enable_shared_from_this<connection> {
 public:
  explicit connection(run_state& r) : run_(r), stream_(r.ioc) {}
  void start() { next(); }

 private:
  void next() {
    if (run_.next < run_.ops.size() && clock_type::now() >= run_.stop_at) run_.time_limited = true;
    if (run_.next >= run_.ops.size() || run_.time_limited) return drop();
    current_ = run_.next++;
    started_ = clock_type::now();
    if (open_) return send();
    stream_.expires_after(2s);
    stream_.async_connect(run_.endpoint, [self = shared_from_this()](beast::error_code ec) { self->on_connect(ec); });
  }

  void on_connect(beast::error_code ec) {
    if (ec) {
      ++run_.connect_errors;
      // Never sent: nothing can have been applied; counted as "no answer".
      op().no_answer = "connect: " + ec.message();
      drop();
      // Back off a little so a dead server does not spin the loop.
      auto timer = std::make_shared<net::steady_timer>(run_.ioc, 100ms);
      timer->async_wait([self = shared_from_this(), timer](beast::error_code) { self->next(); });
      return;
    }
    beast::error_code ignored;
    stream_.socket().set_option(tcp::no_delay(true), ignored);
    open_ = true;
    send();
  }

  void send() {
    write_op& w = op();
    out_ = "PATCH " + w.target + " HTTP/1.1\r\nHost: bench.local\r\nContent-Type: application/json\r\nContent-Length: " +
           std::to_string(w.body.size()) + "\r\n\r\n" + w.body;
    w.sent = true;
    stream_.expires_after(run_.opts.deadline);
    net::async_write(stream_, net::buffer(out_), [self = shared_from_this()](beast::error_code ec, std::size_t) {
      if (ec) return self->on_read(ec);
      self->parser_.emplace();
      self->parser_->body_limit(1 << 20);
      http::async_read(self->stream_, self->buffer_, *self->parser_,
                       [self](beast::error_code ec, std::size_t) { self->on_read(ec); });
    });
  }

  void on_read(beast::error_code ec) {
    write_op& w = op();
    w.latency_ms = std::chrono::duration<double, std::milli>(clock_type::now() - started_).count();
    if (ec) {
      w.no_answer = ec == beast::error::timeout ? "deadline passed" : "closed: " + ec.message();
      drop();
      return next();
    }
    const auto& res = parser_->get();
    w.status = res.result_int();
    if (w.status >= 200 && w.status < 300) {
      const json j = json::parse(res.body(), nullptr, false);
      w.wrong_body = !j.is_object() || !j.contains("id") || j["id"] != w.ability;
    }
    if (!res.keep_alive()) drop();
    next();
  }

  void drop() {
    if (!open_) return;
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.close();
    buffer_.clear();
    open_ = false;
  }

  write_op& op() { return run_.ops[current_]; }

  run_state& run_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::response_parser<http::string_body>> parser_;
  std::string out_;
  std::size_t current_ = 0;
  clock_type::time_point started_;
  bool open_ = false;
};

// ---------------------------------------------------------------------------------------------
// The mock's state: applied counts by opId, abilities, calls by endpoint.

struct upstream_state {
  std::map<std::string, std::uint64_t> applied;                 // opId -> times applied
  std::map<std::string, std::pair<std::int64_t, std::int64_t>> abilities;  // "c/a" -> score, xp
  std::map<std::string, std::uint64_t> calls;                   // endpoint -> calls received
};

std::optional<upstream_state> read_state(const options& o) {
  auto text = batchgate::load::simple_get(o.host, o.upstream_port, "/__soak/state");
  if (!text) return std::nullopt;
  const json j = json::parse(*text, nullptr, false);
  if (!j.is_object() || !j.contains("ability_ops") || !j.contains("abilities") || !j.contains("calls"))
    return std::nullopt;
  upstream_state s;
  for (const auto& [id, n] : j["ability_ops"].items()) s.applied[id] = n.get<std::uint64_t>();
  for (const auto& [key, a] : j["abilities"].items())
    s.abilities[key] = {a.value("score", std::int64_t{0}), a.value("experience_points", std::int64_t{0})};
  for (const auto& [name, n] : j["calls"].items()) s.calls[name] = n.get<std::uint64_t>();
  return s;
}

template <class Map>
typename Map::mapped_type value_or_zero(const Map& m, const std::string& key) {
  auto it = m.find(key);
  return it == m.end() ? typename Map::mapped_type{} : it->second;
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const auto rank = static_cast<std::size_t>(std::max(1.0, std::ceil(p / 100.0 * static_cast<double>(v.size()))));
  return v[std::min(rank, v.size()) - 1];
}

// ---------------------------------------------------------------------------------------------

[[noreturn]] void usage(const std::string& why) {
  std::cerr << "batchgate-write-bench: " << why << "\n"
            << "usage: batchgate-write-bench --port P --upstream-port P [--host H] [--writes N]\n"
               "  [--connections N] [--characters N] [--abilities N] [--hot N] [--hot-pct N]\n"
               "  [--invalid-pct N] [--seed N] [--op-prefix S] [--label S] [--deadline-ms N]\n"
               "  [--settle-ms N] [--max-seconds N] [--max-failure-lines N]\n";
  std::exit(2);
}

options parse(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    const std::string_view flag = argv[i];
    if (i + 1 >= argc) usage("missing value for " + std::string(flag));
    const std::string value = argv[++i];
    auto number = [&] {
      if (value.empty() || value.size() > 18 || value.find_first_not_of("0123456789") != std::string::npos)
        usage("bad number for " + std::string(flag) + ": " + value);
      return std::stoull(value);
    };
    if (flag == "--host") o.host = value;
    else if (flag == "--port") o.port = static_cast<unsigned short>(number());
    else if (flag == "--upstream-port") o.upstream_port = static_cast<unsigned short>(number());
    else if (flag == "--writes") o.writes = number();
    else if (flag == "--connections") o.connections = static_cast<unsigned>(number());
    else if (flag == "--characters") o.characters = static_cast<unsigned>(number());
    else if (flag == "--abilities") o.abilities = static_cast<unsigned>(number());
    else if (flag == "--hot") o.hot = static_cast<unsigned>(number());
    else if (flag == "--hot-pct") o.hot_pct = static_cast<unsigned>(number());
    else if (flag == "--invalid-pct") o.invalid_pct = static_cast<unsigned>(number());
    else if (flag == "--seed") o.seed = number();
    else if (flag == "--op-prefix") o.op_prefix = value;
    else if (flag == "--label") o.label = value;
    else if (flag == "--deadline-ms") o.deadline = std::chrono::milliseconds(number());
    else if (flag == "--settle-ms") o.settle = std::chrono::milliseconds(number());
    else if (flag == "--max-seconds") o.max_seconds = std::chrono::seconds(number());
    else if (flag == "--max-failure-lines") o.max_failure_lines = static_cast<unsigned>(number());
    else usage("unknown option " + std::string(flag));
  }
  if (o.port == 0 || o.upstream_port == 0) usage("--port and --upstream-port are required");
  if (o.writes == 0 || o.connections == 0 || o.characters == 0 || o.abilities == 0) usage("counts must be >= 1");
  if (o.hot == 0 || o.hot > o.abilities) usage("--hot must be 1..--abilities");
  if (o.hot_pct > 100 || o.invalid_pct > 100) usage("percentages are 0..100");
  if (o.op_prefix.empty() || o.op_prefix.find_first_of("\"\\") != std::string::npos) usage("bad --op-prefix");
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  std::signal(SIGPIPE, SIG_IGN);
  const options opts = parse(argc, argv);
  std::vector<write_op> ops = plan(opts);

  std::vector<std::string> failures;
  std::uint64_t failure_count = 0;
  auto failure = [&](std::string line) {
    ++failure_count;
    if (failures.size() < opts.max_failure_lines) failures.push_back(std::move(line));
  };

  const auto before = read_state(opts);
  if (!before) {
    std::printf("FAILURE: [%s] cannot read GET /__soak/state from 127.0.0.1:%u (mock --state-endpoint?)\n",
                opts.label.c_str(), opts.upstream_port);
    std::printf("WRITE_RESULT label=%s ok=0 error=no_state\n", opts.label.c_str());
    return 1;
  }

  run_state run(opts, ops);
  run.endpoint = tcp::endpoint(net::ip::make_address(opts.host), opts.port);
  const auto started = clock_type::now();
  run.stop_at = started + opts.max_seconds;
  for (unsigned i = 0; i < opts.connections; ++i) std::make_shared<connection>(run)->start();
  run.ioc.run();
  const double seconds = std::chrono::duration<double>(clock_type::now() - started).count();

  // Writes still travelling (a late upstream answer, a batch the gateway gave up on) land first.
  std::this_thread::sleep_for(opts.settle);
  const auto after = read_state(opts);
  if (!after) {
    std::printf("FAILURE: [%s] cannot read GET /__soak/state after the run\n", opts.label.c_str());
    std::printf("WRITE_RESULT label=%s ok=0 error=no_state\n", opts.label.c_str());
    return 1;
  }

  // ---- per-write exactly-once check ----
  std::uint64_t sent = 0, valid = 0, invalid = 0, acked = 0, refused = 0, unknown = 0, not_sent = 0;
  std::uint64_t lost = 0, doubled = 0, refused_applied = 0, unknown_applied = 0, wrong = 0;
  std::map<unsigned, std::uint64_t> statuses;
  std::map<std::string, std::uint64_t> no_answer;
  std::vector<double> latencies;
  // (character, ability) -> expected change of score and xp from the writes the mock applied
  std::map<std::string, std::pair<std::int64_t, std::int64_t>> expected;
  for (const auto& w : ops) {
    (w.valid ? valid : invalid) += 1;
    const std::string key = std::to_string(w.character) + "/" + std::to_string(w.ability);
    auto& e = expected[key];
    const std::uint64_t n = value_or_zero(after->applied, w.id) - value_or_zero(before->applied, w.id);
    e.first += static_cast<std::int64_t>(n) * w.signed_score();
    e.second += static_cast<std::int64_t>(n) * w.signed_xp();
    if (!w.sent) {
      ++not_sent;
      if (!w.no_answer.empty()) ++no_answer[w.no_answer];
      if (n > 0) failure("FAILURE: APPLIED BUT NEVER SENT " + w.describe() + ": applied " + std::to_string(n) + "x");
      continue;
    }
    ++sent;
    if (w.status) latencies.push_back(w.latency_ms);
    const std::string answered = w.status ? "answered " + std::to_string(w.status) : "not answered (" + w.no_answer + ")";
    if (w.status) ++statuses[w.status];
    else ++no_answer[w.no_answer];
    if (w.status >= 200 && w.status < 300) {
      ++acked;
      // An invalid operation cannot be applied: a 2xx for it is a wrong answer, not a lost write.
      if (!w.valid) ++wrong, failure("FAILURE: WRONG " + w.describe() + ": an invalid operation " + answered);
      else if (n == 0) ++lost, failure("FAILURE: LOST " + w.describe() + ": " + answered + ", applied 0 times");
      if (n > 1) ++doubled, failure("FAILURE: DOUBLED " + w.describe() + ": " + answered + ", applied " + std::to_string(n) + " times");
      if (w.valid && w.wrong_body) ++wrong, failure("FAILURE: WRONG " + w.describe() + ": " + answered + " with another ability's body");
    } else if (w.status >= 400 && w.status < 500) {
      ++refused;
      if (n > 0) ++refused_applied, failure("FAILURE: REFUSED YET APPLIED " + w.describe() + ": " + answered + ", applied " + std::to_string(n) + " times");
      if (w.valid && w.status == 422) ++wrong, failure("FAILURE: WRONG " + w.describe() + ": a valid operation " + answered + " (not isolated)");
    } else {
      ++unknown;
      unknown_applied += n > 0;
      if (n > 1) ++doubled, failure("FAILURE: DOUBLED " + w.describe() + ": " + answered + ", applied " + std::to_string(n) + " times");
    }
  }

  // ---- writes the mock applied that this run did not send ----
  const std::string prefix = opts.op_prefix + "-";
  std::uint64_t strangers = 0;
  for (const auto& [id, n] : after->applied) {
    if (id.rfind(prefix, 0) != 0) continue;
    const auto rest = id.substr(prefix.size());
    const bool ours = !rest.empty() && rest.find_first_not_of("0123456789") == std::string::npos &&
                      rest.size() < 19 && std::stoull(rest) >= 1 && std::stoull(rest) <= ops.size();
    if (!ours && n > value_or_zero(before->applied, id)) ++strangers, failure("FAILURE: APPLIED BUT NEVER SENT opId " + id);
  }

  // ---- final state per (character, ability) = state before + the deltas of the applied ops ----
  std::uint64_t score_checked = 0, score_mismatch = 0;
  for (const auto& [key, delta] : expected) {
    ++score_checked;
    const auto b = value_or_zero(before->abilities, key), a = value_or_zero(after->abilities, key);
    const std::pair<std::int64_t, std::int64_t> want{b.first + delta.first, b.second + delta.second};
    if (a != want) {
      ++score_mismatch;
      failure("FAILURE: SCORE (character/ability " + key + "): before " + std::to_string(b.first) + "/" +
              std::to_string(b.second) + " + applied deltas " + std::to_string(delta.first) + "/" +
              std::to_string(delta.second) + " = " + std::to_string(want.first) + "/" + std::to_string(want.second) +
              " (score/xp), upstream has " + std::to_string(a.first) + "/" + std::to_string(a.second));
    }
  }
  for (const auto& [key, a] : after->abilities) {
    if (expected.count(key) || value_or_zero(before->abilities, key) == a) continue;
    ++score_mismatch;
    failure("FAILURE: SCORE (character/ability " + key + ") changed though no write of this run was for it");
  }

  // ---- upstream calls (differences of the mock's counters) ----
  auto calls = [&](const std::string& name) { return value_or_zero(after->calls, name) - value_or_zero(before->calls, name); };
  const std::uint64_t batch_calls = calls("abilities_batch"), single_calls = calls("abilities_single");
  std::uint64_t all_calls = 0;
  for (const auto& [name, n] : after->calls) all_calls += n - value_or_zero(before->calls, name);
  const std::uint64_t upstream = batch_calls + single_calls;
  const double per_1000 = sent ? 1000.0 * static_cast<double>(upstream) / static_cast<double>(sent) : 0;
  const double saved = sent ? 100.0 * (1.0 - static_cast<double>(upstream) / static_cast<double>(sent)) : 0;
  const double p50 = percentile(latencies, 50), p99 = percentile(latencies, 99);

  // ---- report ----
  std::string status_text;
  for (auto [status, n] : statuses) status_text += std::to_string(status) + ":" + std::to_string(n) + " ";
  for (const auto& [why, n] : no_answer) status_text += "none(" + why + "):" + std::to_string(n) + " ";
  std::printf("-- %s --\n", opts.label.c_str());
  std::printf("   client writes            %llu sent of %llu planned (%llu valid, %llu invalid) over %u connections in %.2f s%s\n",
              (unsigned long long)sent, (unsigned long long)ops.size(), (unsigned long long)valid,
              (unsigned long long)invalid, opts.connections, seconds,
              run.time_limited ? " (stopped early: --max-seconds)" : "");
  std::printf("   answered statuses        %s\n", status_text.c_str());
  std::printf("   upstream calls           %llu (batch endpoint %llu, single endpoint %llu; all endpoints %llu)\n",
              (unsigned long long)upstream, (unsigned long long)batch_calls, (unsigned long long)single_calls,
              (unsigned long long)all_calls);
  std::printf("   per 1000 client writes   %.1f upstream calls; saved %.1f%%\n", per_1000, saved);
  std::printf("   client latency           p50 %.2f ms, p99 %.2f ms (answered writes)\n", p50, p99);
  std::printf("   exactly-once             %llu acked (2xx): %llu LOST, %llu DOUBLED; %llu refused (4xx): %llu applied;"
              " %llu unknown (5xx/no answer): %llu applied\n",
              (unsigned long long)acked, (unsigned long long)lost, (unsigned long long)doubled,
              (unsigned long long)refused, (unsigned long long)refused_applied, (unsigned long long)unknown,
              (unsigned long long)unknown_applied);
  std::printf("   final state              %llu (character, ability) pairs checked, %llu mismatched; %llu wrong answers\n",
              (unsigned long long)score_checked, (unsigned long long)score_mismatch, (unsigned long long)wrong);
  for (const auto& f : failures) std::printf("   %s\n", f.c_str());
  if (failure_count > failures.size())
    std::printf("   ... and %llu more FAILURE lines\n", (unsigned long long)(failure_count - failures.size()));
  std::printf("WRITE_RESULT label=%s ok=%d writes=%llu acked=%llu refused=%llu unknown=%llu upstream_calls=%llu "
              "batch_calls=%llu single_calls=%llu per_1000=%.1f saved_pct=%.1f p50_ms=%.2f p99_ms=%.2f lost=%llu "
              "doubled=%llu refused_applied=%llu wrong=%llu score_mismatch=%llu strangers=%llu seconds=%.2f\n",
              opts.label.c_str(), failure_count == 0, (unsigned long long)sent, (unsigned long long)acked,
              (unsigned long long)refused, (unsigned long long)unknown, (unsigned long long)upstream,
              (unsigned long long)batch_calls, (unsigned long long)single_calls, per_1000, saved, p50, p99,
              (unsigned long long)lost, (unsigned long long)doubled, (unsigned long long)refused_applied,
              (unsigned long long)wrong, (unsigned long long)score_mismatch, (unsigned long long)strangers, seconds);
  std::fflush(stdout);
  return failure_count == 0 ? 0 : 1;
}
