// batchgate-soak-client: the load side of the fault soak (scripts/soak.sh).
//
// Drives a running gateway (in front of `batchgate-mock-upstream --tag-owner --state-endpoint
// --fault-rate R`) with many keep-alive connections and many credentials: coalesced reads (A users,
// B activities), coalesced writes (C abilities, D progress events) and passthrough calls (/echo).
// Every answer is checked: it must come before the client's deadline, exactly once (no bytes after
// it on the connection), and a 2xx must carry the caller's own key and own Authorization (the
// mock tags every item with it) and its own X-Request-Id. While the load runs it swaps the gateway's
// config file and sends SIGHUP every --reload-ms; at the end it sends one request per connection,
// then SIGTERM, and every one of them must still be answered (drain). Last, it asks the mock what it
// applied: a C operation or D event answered 2xx must have been applied exactly once.
//
// Prints a table; exits 1 on any unanswered, doubled, crossed or wrong answer, lost or doubled
// write, or 2 on bad usage. Loops are bounded by --requests and --max-seconds.
//
// One io_context per --threads shard; a shard's counters are only touched by its own thread and
// are summed after the threads are joined.

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include "tests/soak/simple_get.hpp"

#include <signal.h>
#include <sys/types.h>

namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using json = nlohmann::json;
using clock_type = std::chrono::steady_clock;
using namespace std::chrono_literals;

// ---------------------------------------------------------------------------------------------
// Options

struct options {
  std::string host = "127.0.0.1";
  unsigned short port = 0;           // the gateway
  unsigned short admin_port = 0;     // the gateway's admin listener (reload counters), optional
  unsigned short upstream_port = 0;  // the mock (GET /__soak/state), optional
  std::uint64_t requests = 20000;
  unsigned connections = 128;
  unsigned threads = 1;
  unsigned credentials = 32;
  std::size_t users = 1000;  // the mock's --users
  std::chrono::milliseconds deadline{5000};
  std::chrono::seconds max_seconds{120};
  pid_t gateway_pid = 0;
  std::chrono::milliseconds reload_every{1000};
  std::vector<std::string> reload_configs;  // copied in turn over config_path before each SIGHUP
  std::string config_path;
  bool term = true;  // SIGTERM with one request in flight per connection at the end
  std::chrono::milliseconds idle{2000};  // quiet time before the "after" RSS/fd figures
  std::uint64_t seed = 1;
};

// ---------------------------------------------------------------------------------------------
// What a request is and what came back

enum class kind : unsigned { users, activities, abilities, progress, echo_get, echo_post, count_ };
constexpr const char* kind_names[] = {"A users GET (coalesced)",   "B activities GET (coalesced)",
                                      "C abilities PATCH (coalesced)", "D progress POST (coalesced)",
                                      "passthrough GET /echo",     "passthrough POST /echo"};
constexpr std::size_t kind_count = static_cast<std::size_t>(kind::count_);

struct planned {
  kind what = kind::users;
  std::string method;
  std::string target;
  std::string body;
  unsigned credential = 0;
  std::string request_id;
  std::string key;    // A, B: the id; C: ability id; D: clientEventId; echo: the token
  bool valid = true;  // false: an operation/event the upstream must refuse (422)
  std::string op_id;  // C: data.opId
  std::size_t write_index = 0;  // C, D: index into the shard's writes_c / writes_d
};

// The fate of one write, for the exactly-once check.
enum class write_outcome : std::uint8_t { acked, refused, failed, unanswered };

struct write_record {
  std::string id;  // C opId or D clientEventId
  bool valid = true;
  write_outcome outcome = write_outcome::unanswered;
};

struct counters {
  std::uint64_t sent = 0, answered = 0;
  std::array<std::uint64_t, 6> by_class{};  // [0] other, [1..5] 1xx..5xx
  std::uint64_t unanswered_timeout = 0, unanswered_closed = 0, truncated = 0, malformed = 0;
  // Passthrough streams cut after their head: the upstream failed mid-body (an injected fault),
  // and a streaming proxy can only close the connection then. Expected, counted apart.
  std::uint64_t passthrough_cut = 0;
  std::uint64_t doubled = 0, crossed = 0, wrong = 0, no_request_id = 0;
  std::uint64_t garbage_passthrough = 0, fresh_event_duplicate = 0, connect_errors = 0;
  std::array<std::map<unsigned, std::uint64_t>, kind_count> statuses;
  std::array<std::uint64_t, kind_count> sent_by_kind{};
  std::vector<std::string> samples;  // first few problems, for the report

  void problem(std::string what) {
    if (samples.size() < 12) samples.push_back(std::move(what));
  }
  void add(const counters& o) {
    sent += o.sent;
    answered += o.answered;
    for (std::size_t i = 0; i < by_class.size(); ++i) by_class[i] += o.by_class[i];
    unanswered_timeout += o.unanswered_timeout;
    unanswered_closed += o.unanswered_closed;
    truncated += o.truncated;
    passthrough_cut += o.passthrough_cut;
    malformed += o.malformed;
    doubled += o.doubled;
    crossed += o.crossed;
    wrong += o.wrong;
    no_request_id += o.no_request_id;
    garbage_passthrough += o.garbage_passthrough;
    fresh_event_duplicate += o.fresh_event_duplicate;
    connect_errors += o.connect_errors;
    for (std::size_t k = 0; k < kind_count; ++k) {
      sent_by_kind[k] += o.sent_by_kind[k];
      for (auto [status, n] : o.statuses[k]) statuses[k][status] += n;
    }
    for (const auto& s : o.samples) problem(s);
  }
  std::uint64_t unanswered() const { return unanswered_timeout + unanswered_closed + truncated + malformed; }
};

std::vector<std::string> make_credentials(unsigned n, std::uint64_t seed) {
  std::mt19937_64 r(seed * 7919 + 17);
  std::vector<std::string> out;
  for (unsigned i = 0; i < n; ++i) {
    char hex[17];
    std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(r()));
    out.push_back("Bearer soak-" + std::to_string(i) + "-" + hex);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// One shard: an io_context, its connections, its counters.

class shard;

// One keep-alive connection that sends one request at a time.
class connection : public std::enable_shared_from_this<connection> {
 public:
  connection(shard& s, unsigned id);
  void start() { next(); }

 private:
  void next();
  void do_connect();
  void send();
  void on_write(beast::error_code ec);
  void on_read(beast::error_code ec);
  void drop() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.close();
    buffer_.clear();
    open_ = false;
  }
  void finish();

  shard& shard_;
  unsigned id_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::response_parser<http::string_body>> parser_;
  std::string out_;
  planned req_;
  bool open_ = false;
  bool reused_ = false;
  std::array<char, 256> tail_{};
};

class shard {
 public:
  shard(const options& o, const std::vector<std::string>& creds, unsigned index, unsigned conns)
      : opts(o), credentials(creds), index(index), connections(conns), random(o.seed * 1000003 + index) {}

  // Runs `quota` requests over `connections` connections; returns when all are done.
  void run_phase(std::uint64_t quota, bool tail) {
    quota_left = quota;
    tail_phase = tail;
    in_flight_writes = 0;
    ioc.restart();
    for (unsigned i = 0; i < connections; ++i) std::make_shared<connection>(*this, i)->start();
    ioc.run();
  }

  planned plan() {
    planned p;
    const auto roll = std::uniform_int_distribution<int>(0, 99)(random);
    p.credential = std::uniform_int_distribution<unsigned>(0, opts.credentials - 1)(random);
    const std::uint64_t seq = ++sequence;
    p.request_id = "soak-" + std::to_string(index) + "-" + std::to_string(seq);
    auto pick = [&](std::uint64_t lo, std::uint64_t hi) {
      return std::uniform_int_distribution<std::uint64_t>(lo, hi)(random);
    };
    if (roll < 30) {
      p.what = kind::users;
      // 3% of ids do not exist (404 through the gateway).
      const auto id = pick(0, 99) < 3 ? opts.users + pick(1, 1000) : pick(1, opts.users);
      p.method = "GET";
      p.key = std::to_string(id);
      p.target = "/users/" + p.key;
    } else if (roll < 45) {
      p.what = kind::activities;
      p.method = "GET";
      p.key = "a" + std::to_string(pick(1, opts.users));
      p.target = "/api/v1/activities/" + p.key + (pick(0, 1) ? "?fields=id,name" : "");
    } else if (roll < 60) {
      p.what = kind::abilities;
      p.method = "PATCH";
      const auto character = pick(1, 8);
      p.key = std::to_string(pick(1, 16));
      p.op_id = "op-" + std::to_string(index) + "-" + std::to_string(seq);
      p.valid = pick(0, 99) >= 2;  // 2% invalid: only that caller gets 422
      p.target = "/api/characters/" + std::to_string(character) + "/abilities/" + p.key;
      p.body = std::string(R"({"action":")") + (p.valid ? "increment" : "explode") +
               R"(","data":{"score":)" + std::to_string(pick(1, 9)) + R"(,"experience_points":)" +
               std::to_string(pick(1, 99)) + R"(,"opId":")" + p.op_id + "\"}}";
      p.write_index = writes_c.size();
      writes_c.push_back({p.op_id, p.valid, write_outcome::unanswered});
    } else if (roll < 80) {
      p.what = kind::progress;
      p.method = "POST";
      p.key = "ev-" + std::to_string(opts.seed) + "-" + std::to_string(index) + "-" + std::to_string(seq);
      p.valid = pick(0, 99) >= 2;  // 2% invalid (percent > 100): 422
      p.target = "/api/client/progress";
      p.body = R"({"type":"lesson_progress","courseId":"foundations","lessonId":"lesson-video","userId":"u-)" +
               std::to_string(p.credential) + R"(","percent":)" + (p.valid ? std::to_string(pick(0, 100)) : "150") +
               R"(,"position":)" + std::to_string(pick(0, 999)) + R"(,"clientEventId":")" + p.key +
               R"(","timestamp":1730956800000})";
      p.write_index = writes_d.size();
      writes_d.push_back({p.key, p.valid, write_outcome::unanswered});
    } else if (roll < 92) {
      p.what = kind::echo_get;
      p.method = "GET";
      p.key = p.request_id;
      p.target = "/echo/" + p.key + "?c=" + std::to_string(p.credential);
    } else {
      p.what = kind::echo_post;
      p.method = "POST";
      p.key = p.request_id;
      p.target = "/echo/post";
      p.body = R"({"token":")" + p.key + R"(","pad":")" + std::string(pick(0, 2000), 'x') + "\"}";
    }
    return p;
  }

  // Checks one complete answer; counts it.
  void check(const planned& p, const http::response<http::string_body>& res) {
    const unsigned status = res.result_int();
    auto& c = stats;
    ++c.answered;
    ++c.by_class[status >= 100 && status < 600 ? status / 100 : 0];
    ++c.statuses[static_cast<std::size_t>(p.what)][status];
    const std::string& auth = credentials[p.credential];
    auto describe = [&](std::string_view why) {
      std::string body = res.body().substr(0, 300);
      return std::string(why) + ": " + p.method + " " + p.target + " as credential " +
             std::to_string(p.credential) + " -> " + std::to_string(status) + " " + body;
    };
    auto crossed = [&](std::string_view why) {
      ++c.crossed;
      c.problem(describe(std::string("CROSSED ") + std::string(why)));
    };
    auto wrong = [&](std::string_view why) {
      ++c.wrong;
      c.problem(describe(std::string("WRONG ") + std::string(why)));
    };

    // Every answer carries the caller's own request id back.
    auto rid = res.find("X-Request-Id");
    if (rid == res.end()) {
      ++c.no_request_id;
    } else if (rid->value() != p.request_id) {
      crossed("X-Request-Id " + std::string(rid->value()) + " instead of " + p.request_id);
      return;
    }

    const bool ok = status >= 200 && status < 300;
    auto record_write = [&](std::vector<write_record>& v) {
      v[p.write_index].outcome = ok ? write_outcome::acked
                                    : status == 422 ? write_outcome::refused : write_outcome::failed;
    };
    if (p.what == kind::abilities) record_write(writes_c);
    if (p.what == kind::progress) record_write(writes_d);

    if (p.what == kind::echo_get || p.what == kind::echo_post) {
      if (!ok) return;
      if (res.body() == "{not json") {  // the mock's injected garbage, passed through as is
        ++c.garbage_passthrough;
        return;
      }
      json j = json::parse(res.body(), nullptr, false);
      if (!j.is_object() || !j.contains("headers") || !j["headers"].is_object())
        return wrong("echo answer is not the echo");
      const auto& h = j["headers"];
      if (h.value("authorization", std::string()) != auth) return crossed("echo of another credential");
      if (p.what == kind::echo_get && j.value("target", std::string()) != p.target)
        return crossed("echo of another target");
      if (p.what == kind::echo_post && j.value("body", std::string()) != p.body)
        return crossed("echo of another body");
      return;
    }

    if (p.what == kind::users || p.what == kind::activities) {
      const bool exists = p.what == kind::activities || std::stoull(p.key) <= opts.users;
      if (!ok) {
        if (status == 404 && exists) wrong("404 for an existing item");
        return;
      }
      if (!exists) return wrong("2xx for a missing item");
      json j = json::parse(res.body(), nullptr, false);
      if (!j.is_object() || !j.contains("id") || !j.contains("owner")) return wrong("item without id/owner");
      if (j["id"] != p.key) return crossed("another key's item");
      if (j["owner"] != auth) return crossed("another partition's item");
      return;
    }

    if (p.what == kind::abilities) {
      if (!p.valid) {
        if (ok) wrong("an invalid operation got 2xx");
        return;
      }
      if (status == 422) return wrong("a valid operation got 422 (isolation)");
      if (!ok) return;
      json j = json::parse(res.body(), nullptr, false);
      if (!j.is_object() || !j.contains("id") || !j.contains("owner")) return wrong("ability without id/owner");
      if (j["id"] != std::stoll(p.key)) return crossed("another key's ability");
      if (j["owner"] != auth) return crossed("another partition's ability");
      return;
    }

    if (p.what == kind::progress) {
      if (!p.valid) {
        if (ok) wrong("an invalid event got 2xx");
        return;
      }
      if (status == 422) return wrong("a valid event got 422");
      if (!ok) return;
      json j = json::parse(res.body(), nullptr, false);
      if (status == 202 && j == json{{"status", "accepted"}}) return;
      if (status == 200 && j == json{{"status", "duplicate"}}) {
        // Each event is sent once: the upstream saw it before only if the gateway sent it twice.
        ++c.fresh_event_duplicate;
        return;
      }
      return wrong("unexpected progress answer");
    }
  }

  const options& opts;
  const std::vector<std::string>& credentials;
  const unsigned index;
  const unsigned connections;
  net::io_context ioc{1};
  std::mt19937_64 random;
  std::uint64_t sequence = 0;
  std::uint64_t quota_left = 0;
  bool tail_phase = false;
  unsigned in_flight_writes = 0;
  counters stats;
  std::vector<write_record> writes_c, writes_d;
  tcp::endpoint endpoint;
  clock_type::time_point stop_at = clock_type::time_point::max();  // --max-seconds
  bool time_limited = false;

  // Set by the controller: SIGTERM went out (tail phase).
  static inline std::atomic<bool> term_sent{false};
  // Tail-phase requests fully written, over every shard.
  static inline std::atomic<unsigned> tail_written{0};
};

connection::connection(shard& s, unsigned id)
    : shard_(s), id_(id), stream_(s.ioc) {}

void connection::next() {
  if (!shard_.tail_phase && clock_type::now() >= shard_.stop_at) {
    shard_.quota_left = 0;
    shard_.time_limited = true;
  }
  if (shard_.quota_left == 0) return finish();
  --shard_.quota_left;
  req_ = shard_.plan();
  if (!open_) return do_connect();
  // Bytes that arrived while nothing was asked are an answer to no request.
  beast::error_code ec;
  const auto pending = stream_.socket().available(ec);
  if (buffer_.size() > 0 || (!ec && pending > 0)) {
    ++shard_.stats.doubled;
    shard_.stats.problem("DOUBLED: " + std::to_string(buffer_.size() + pending) +
                         " unrequested bytes on an idle connection");
    drop();
    return do_connect();
  }
  reused_ = true;
  send();
}

void connection::do_connect() {
  reused_ = false;
  stream_.expires_after(2s);
  stream_.async_connect(shard_.endpoint, [self = shared_from_this()](beast::error_code ec) {
    if (ec) {
      ++self->shard_.stats.connect_errors;
      self->shard_.stats.problem("CONNECT: " + ec.message());
      ++self->shard_.stats.sent;  // counted as sent and unanswered: the caller got nothing
      ++self->shard_.stats.sent_by_kind[static_cast<std::size_t>(self->req_.what)];
      ++self->shard_.stats.unanswered_closed;
      self->drop();
      if (self->shard_.tail_phase) {
        ++shard::tail_written;
        return;
      }
      // Back off a little so a dead gateway does not spin the loop.
      auto timer = std::make_shared<net::steady_timer>(self->shard_.ioc, 100ms);
      timer->async_wait([self, timer](beast::error_code) { self->next(); });
      return;
    }
    beast::error_code ignored;
    self->stream_.socket().set_option(tcp::no_delay(true), ignored);
    self->open_ = true;
    self->send();
  });
}

void connection::send() {
  const std::string& auth = shard_.credentials[req_.credential];
  out_.clear();
  out_ += req_.method + " " + req_.target + " HTTP/1.1\r\nHost: soak.local\r\nAuthorization: " + auth +
          "\r\nX-Request-Id: " + req_.request_id + "\r\n";
  if (!req_.body.empty())
    out_ += "Content-Type: application/json\r\nContent-Length: " + std::to_string(req_.body.size()) + "\r\n";
  out_ += "\r\n";
  out_ += req_.body;
  ++shard_.stats.sent;
  ++shard_.stats.sent_by_kind[static_cast<std::size_t>(req_.what)];
  stream_.expires_after(shard_.opts.deadline);
  net::async_write(stream_, net::buffer(out_), [self = shared_from_this()](beast::error_code ec, std::size_t) {
    self->on_write(ec);
  });
}

void connection::on_write(beast::error_code ec) {
  if (shard_.tail_phase) ++shard::tail_written;
  parser_.emplace();
  parser_->body_limit(64 * 1024 * 1024);
  if (ec) return on_read(ec);
  http::async_read(stream_, buffer_, *parser_, [self = shared_from_this()](beast::error_code ec, std::size_t) {
    self->on_read(ec);
  });
}

void connection::on_read(beast::error_code ec) {
  auto& c = shard_.stats;
  if (ec) {
    const bool got_some = parser_ && parser_->got_some();
    std::string what = std::string(kind_names[static_cast<std::size_t>(req_.what)]) + " " + req_.target +
                       " (" + (reused_ ? "reused" : "new") + " connection" +
                       (shard::term_sent ? ", after SIGTERM" : "") + "): " + ec.message();
    if (ec == beast::error::timeout) {
      ++c.unanswered_timeout;
      c.problem("UNANSWERED (deadline) " + what);
    } else if (got_some && ec != http::error::end_of_stream && ec != net::error::eof &&
               ec != net::error::connection_reset && ec != http::error::partial_message) {
      ++c.malformed;
      c.problem("MALFORMED " + what);
    } else if (got_some && (req_.what == kind::echo_get || req_.what == kind::echo_post) && parser_->is_header_done()) {
      ++c.passthrough_cut;
    } else if (got_some) {
      ++c.truncated;
      c.problem("TRUNCATED " + what);
    } else {
      ++c.unanswered_closed;
      c.problem("UNANSWERED (closed) " + what);
    }
    drop();
    return next();
  }
  auto res = parser_->release();
  shard_.check(req_, res);
  if (buffer_.size() > 0) {
    ++c.doubled;
    c.problem("DOUBLED: " + std::to_string(buffer_.size()) + " bytes after the answer to " + req_.target + ": " +
              std::string(static_cast<const char*>(buffer_.data().data()), std::min<std::size_t>(buffer_.size(), 120)));
    drop();
  } else if (!res.keep_alive()) {
    drop();
  }
  next();
}

void connection::finish() {
  if (!open_) return;
  // Nothing may follow the last answer either: wait briefly for stray bytes.
  stream_.expires_after(150ms);
  stream_.async_read_some(net::buffer(tail_), [self = shared_from_this()](beast::error_code ec, std::size_t n) {
    if (!ec && n > 0) {
      ++self->shard_.stats.doubled;
      self->shard_.stats.problem("DOUBLED: " + std::to_string(n) + " unrequested bytes after the last answer: " +
                                 std::string(self->tail_.data(), std::min<std::size_t>(n, 120)));
    }
    self->drop();
  });
}

// ---------------------------------------------------------------------------------------------
// The gateway process from outside

struct process_figures {
  long rss_kib = -1;
  long fds = -1;
  long threads = -1;
};

process_figures read_process(pid_t pid) {
  process_figures f;
  if (pid <= 0) return f;
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) f.rss_kib = std::atol(line.c_str() + 6);
    if (line.rfind("Threads:", 0) == 0) f.threads = std::atol(line.c_str() + 8);
  }
  std::error_code ec;
  long n = 0;
  for (auto it = std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec))
    ++n;
  if (!ec) f.fds = n;
  return f;
}

using batchgate::load::simple_get;  // admin metrics, the mock's state

// Sum of a Prometheus counter's samples whose line starts with `prefix`.
double metric_sum(const std::string& text, std::string_view prefix) {
  double sum = 0;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(prefix, 0) == 0) sum += std::atof(line.c_str() + line.rfind(' ') + 1);
  return sum;
}

// ---------------------------------------------------------------------------------------------
// Reloads: swap the config file and SIGHUP, every reload_every, until stopped.

class reloader {
 public:
  explicit reloader(const options& o) : opts_(o) {}
  ~reloader() { stop(); }
  void start() {
    if (opts_.gateway_pid <= 0 || opts_.reload_every.count() == 0) return;
    thread_ = std::thread([this] {
      std::size_t turn = 0;
      const auto end = clock_type::now() + opts_.max_seconds;  // bounded even if never stopped
      std::unique_lock lock(mutex_);
      while (!stop_ && clock_type::now() < end) {
        if (cv_.wait_for(lock, opts_.reload_every, [this] { return stop_; })) break;
        if (!opts_.reload_configs.empty() && !opts_.config_path.empty()) {
          const auto& from = opts_.reload_configs[turn++ % opts_.reload_configs.size()];
          const std::string tmp = opts_.config_path + ".tmp";
          std::error_code ec;
          std::filesystem::copy_file(from, tmp, std::filesystem::copy_options::overwrite_existing, ec);
          if (!ec) std::filesystem::rename(tmp, opts_.config_path, ec);
        }
        if (::kill(opts_.gateway_pid, SIGHUP) == 0) ++count_;
      }
    });
  }
  void stop() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }
  unsigned count() const { return count_; }

 private:
  const options& opts_;
  std::thread thread_;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::atomic<unsigned> count_{0};
};

// ---------------------------------------------------------------------------------------------

[[noreturn]] void usage(const std::string& why) {
  std::cerr << "batchgate-soak-client: " << why << "\n"
            << "usage: batchgate-soak-client --port P [--admin-port P] [--upstream-port P]\n"
               "  [--requests N] [--connections N] [--threads N] [--credentials N] [--users N]\n"
               "  [--deadline-ms N] [--max-seconds N] [--gateway-pid PID] [--reload-ms N]\n"
               "  [--reload-configs A.yaml,B.yaml --config-path LIVE.yaml] [--no-term] [--idle-ms N] [--seed N]\n";
  std::exit(2);
}

options parse(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    std::string_view flag = argv[i];
    if (flag == "--no-term") {
      o.term = false;
      continue;
    }
    if (i + 1 >= argc) usage("missing value for " + std::string(flag));
    std::string value = argv[++i];
    auto number = [&] {
      if (value.empty() || value.find_first_not_of("0123456789") != std::string::npos)
        usage("bad number for " + std::string(flag) + ": " + value);
      return std::stoull(value);
    };
    if (flag == "--host") o.host = value;
    else if (flag == "--port") o.port = static_cast<unsigned short>(number());
    else if (flag == "--admin-port") o.admin_port = static_cast<unsigned short>(number());
    else if (flag == "--upstream-port") o.upstream_port = static_cast<unsigned short>(number());
    else if (flag == "--requests") o.requests = number();
    else if (flag == "--connections") o.connections = static_cast<unsigned>(number());
    else if (flag == "--threads") o.threads = static_cast<unsigned>(number());
    else if (flag == "--credentials") o.credentials = static_cast<unsigned>(number());
    else if (flag == "--users") o.users = number();
    else if (flag == "--deadline-ms") o.deadline = std::chrono::milliseconds(number());
    else if (flag == "--max-seconds") o.max_seconds = std::chrono::seconds(number());
    else if (flag == "--gateway-pid") o.gateway_pid = static_cast<pid_t>(number());
    else if (flag == "--reload-ms") o.reload_every = std::chrono::milliseconds(number());
    else if (flag == "--config-path") o.config_path = value;
    else if (flag == "--idle-ms") o.idle = std::chrono::milliseconds(number());
    else if (flag == "--seed") o.seed = number();
    else if (flag == "--reload-configs") {
      std::stringstream in(value);
      std::string part;
      while (std::getline(in, part, ','))
        if (!part.empty()) o.reload_configs.push_back(part);
    } else usage("unknown option " + std::string(flag));
  }
  if (o.port == 0) usage("--port is required");
  if (o.connections == 0 || o.threads == 0 || o.credentials == 0 || o.users == 0) usage("counts must be >= 1");
  if (o.threads > o.connections) o.threads = o.connections;
  return o;
}

std::string kib(long v) { return v < 0 ? "n/a" : std::to_string(v) + " KiB"; }
std::string num(long v) { return v < 0 ? "n/a" : std::to_string(v); }

}  // namespace

int main(int argc, char** argv) {
  std::signal(SIGPIPE, SIG_IGN);
  const options opts = parse(argc, argv);
  const auto credentials = make_credentials(opts.credentials, opts.seed);
  const tcp::endpoint endpoint(net::ip::make_address(opts.host), opts.port);

  std::vector<std::unique_ptr<shard>> shards;
  for (unsigned i = 0; i < opts.threads; ++i) {
    const unsigned conns = opts.connections / opts.threads + (i < opts.connections % opts.threads ? 1 : 0);
    shards.push_back(std::make_unique<shard>(opts, credentials, i, conns));
    shards.back()->endpoint = endpoint;
  }
  // Runs one phase on every shard, `total` requests shared in proportion to connections.
  auto run_phase = [&](std::uint64_t total, bool tail, auto&& while_running) {
    std::vector<std::thread> threads;
    std::uint64_t given = 0;
    for (unsigned i = 0; i < shards.size(); ++i) {
      std::uint64_t q = total * shards[i]->connections / opts.connections;
      if (i + 1 == shards.size()) q = total - given;
      given += q;
      threads.emplace_back([&, i, q] { shards[i]->run_phase(q, tail); });
    }
    while_running();
    for (auto& t : threads) t.join();
  };

  const auto before = read_process(opts.gateway_pid);
  const std::uint64_t tail = opts.term ? opts.connections : 0;
  const std::uint64_t main_requests = opts.requests > tail ? opts.requests - tail : 0;
  const std::uint64_t warmup = std::min<std::uint64_t>(main_requests, std::max<std::uint64_t>(2000, main_requests / 50));

  reloader reloads(opts);
  reloads.start();
  const auto started = clock_type::now();
  for (auto& s : shards) s->stop_at = started + opts.max_seconds;
  // Warm-up (first 2%): pools, caches and allocator arenas reach their working size.
  run_phase(warmup, false, [] {});
  std::this_thread::sleep_for(opts.idle);
  const auto warm = read_process(opts.gateway_pid);
  const auto load_started = clock_type::now();
  run_phase(main_requests - warmup, false, [] {});
  const auto load_seconds = std::chrono::duration<double>(clock_type::now() - load_started).count();
  const auto main_seconds = std::chrono::duration<double>(clock_type::now() - started).count();
  reloads.stop();
  // Quiet: every connection of ours is closed; what the gateway still holds is its own.
  std::this_thread::sleep_for(opts.idle);
  const auto after = read_process(opts.gateway_pid);

  double reloads_ok = -1, reloads_failed = -1;
  if (opts.admin_port != 0) {
    if (auto m = simple_get(opts.host, opts.admin_port, "/metrics")) {
      reloads_ok = metric_sum(*m, "batchgate_config_reloads_total{result=\"success\"");
      reloads_failed = metric_sum(*m, "batchgate_config_reloads_total") - reloads_ok;
    }
  }

  // Drain: one request in flight on every connection, then SIGTERM.
  counters main_stats;
  for (auto& s : shards) main_stats.add(s->stats);
  if (opts.term && opts.gateway_pid > 0) {
    for (auto& s : shards) s->stats = {};
    run_phase(tail, true, [&] {
      const auto give_up = clock_type::now() + 10s;
      while (shard::tail_written.load() < tail && clock_type::now() < give_up) std::this_thread::sleep_for(1ms);
      // Written is not yet read: give the gateway a moment to take every request in.
      std::this_thread::sleep_for(20ms);
      shard::term_sent = true;
      ::kill(opts.gateway_pid, SIGTERM);
    });
  }
  counters drain_stats;
  for (auto& s : shards) drain_stats.add(s->stats);
  counters total = main_stats;
  total.add(drain_stats);

  // Exactly-once check of the writes against what the mock applied.
  std::uint64_t c_acked = 0, c_lost = 0, c_doubled = 0, c_doubled_unacked = 0, c_refused_applied = 0;
  std::uint64_t d_acked = 0, d_lost = 0, d_reprocessed = 0, d_reprocessed_unacked = 0, unknown_applied = 0;
  std::uint64_t c_total = 0, d_total = 0;
  bool state_checked = false;
  std::vector<std::string> write_samples;
  if (opts.upstream_port != 0) {
    if (auto text = simple_get(opts.host, opts.upstream_port, "/__soak/state")) {
      json state = json::parse(*text, nullptr, false);
      if (state.is_object() && state.contains("ability_ops") && state.contains("progress_events")) {
        state_checked = true;
        auto& ops = state["ability_ops"];
        auto& events = state["progress_events"];
        std::uint64_t c_matched = 0, d_matched = 0;
        auto sample = [&](std::string s) {
          if (write_samples.size() < 8) write_samples.push_back(std::move(s));
        };
        for (auto& s : shards) {
          for (const auto& w : s->writes_c) {
            ++c_total;
            auto it = ops.find(w.id);
            const unsigned n = it == ops.end() ? 0 : it->get<unsigned>();
            c_matched += it != ops.end();
            if (w.outcome == write_outcome::acked) {
              ++c_acked;
              if (n == 0) ++c_lost, sample("LOST C op " + w.id + " answered 2xx, never applied");
              if (n > 1) ++c_doubled, sample("DOUBLED C op " + w.id + " answered 2xx, applied " + std::to_string(n) + "x");
            } else {
              if (n > 1) ++c_doubled_unacked, sample("C op " + w.id + " not answered 2xx, applied " + std::to_string(n) + "x");
              if (w.outcome == write_outcome::refused && n > 0) ++c_refused_applied;
            }
          }
          for (const auto& w : s->writes_d) {
            ++d_total;
            auto it = events.find(w.id);
            const unsigned n = it == events.end() ? 0 : it->get<unsigned>();
            d_matched += it != events.end();
            if (w.outcome == write_outcome::acked) {
              ++d_acked;
              if (n == 0) ++d_lost, sample("LOST D event " + w.id + " answered 2xx, never stored");
              if (n > 1) ++d_reprocessed, sample("D event " + w.id + " answered 2xx, processed " + std::to_string(n) + "x");
            } else if (n > 1) {
              ++d_reprocessed_unacked;
            }
          }
        }
        unknown_applied = (ops.size() - c_matched) + (events.size() - d_matched);
      }
    }
  }

  // ------------------------------------------------------------------------------------------
  // Report
  auto& t = total;
  std::printf("\n== batchgate fault soak ==\n");
  std::printf("%-44s %12llu\n", "requests sent", (unsigned long long)t.sent);
  std::printf("%-44s %12llu  in %.1f s (%.0f req/s after warm-up, %.0f overall)\n", "  main phase",
              (unsigned long long)main_stats.sent, main_seconds,
              load_seconds > 0 ? (main_stats.sent - std::min(main_stats.sent, warmup)) / load_seconds : 0.0,
              main_seconds > 0 ? main_stats.sent / main_seconds : 0.0);
  std::printf("%-44s %12llu\n", "  drain phase (in flight at SIGTERM)", (unsigned long long)drain_stats.sent);
  bool time_limited = false;
  for (auto& s : shards) time_limited = time_limited || s->time_limited;
  if (time_limited) std::printf("  (stopped early: --max-seconds %lld reached)\n", (long long)opts.max_seconds.count());
  for (std::size_t k = 0; k < kind_count; ++k) {
    std::string codes;
    for (auto [status, n] : t.statuses[k])
      codes.append(1, ' ').append(std::to_string(status)).append(1, ':').append(std::to_string(n));
    std::printf("    %-40s %12llu  %s\n", kind_names[k], (unsigned long long)t.sent_by_kind[k], codes.c_str());
  }
  std::printf("%-44s %12llu\n", "answered", (unsigned long long)t.answered);
  const char* classes[] = {"other", "1xx", "2xx", "3xx", "4xx", "5xx"};
  for (std::size_t i = 1; i < 6; ++i)
    if (t.by_class[i] || i == 2 || i == 5)
      std::printf("    %-40s %12llu\n", classes[i], (unsigned long long)t.by_class[i]);
  if (t.by_class[0]) std::printf("    %-40s %12llu\n", "other", (unsigned long long)t.by_class[0]);
  std::printf("%-44s %12llu\n", "UNANSWERED", (unsigned long long)t.unanswered());
  std::printf("    %-40s %12llu\n", "deadline passed", (unsigned long long)t.unanswered_timeout);
  std::printf("    %-40s %12llu\n", "closed before any answer", (unsigned long long)t.unanswered_closed);
  std::printf("    %-40s %12llu\n", "truncated answer", (unsigned long long)t.truncated);
  std::printf("%-44s %12llu\n", "passthrough streams cut mid-body (expected)", (unsigned long long)t.passthrough_cut);
  std::printf("    %-40s %12llu\n", "malformed answer", (unsigned long long)t.malformed);
  std::printf("    %-40s %12llu\n", "  of which in the drain phase", (unsigned long long)drain_stats.unanswered());
  std::printf("%-44s %12llu\n", "ANSWERED TWICE (bytes after an answer)", (unsigned long long)t.doubled);
  std::printf("%-44s %12llu\n", "CROSSED (other partition/key/request id)", (unsigned long long)t.crossed);
  std::printf("%-44s %12llu\n", "WRONG (bad status or shape for the key)", (unsigned long long)t.wrong);
  std::printf("%-44s %12llu\n", "answers without X-Request-Id", (unsigned long long)t.no_request_id);
  std::printf("%-44s %12llu\n", "injected garbage passed through (2xx)", (unsigned long long)t.garbage_passthrough);
  std::printf("%-44s %12llu\n", "connect errors", (unsigned long long)t.connect_errors);
  std::printf("%-44s %12u\n", "SIGHUP reloads sent", reloads.count());
  if (reloads_ok >= 0)
    std::printf("%-44s %12.0f ok, %.0f other\n", "  reloads counted by the gateway", reloads_ok, reloads_failed);
  if (state_checked) {
    std::printf("writes, checked against the upstream's store:\n");
    std::printf("    %-40s %12llu sent, %llu answered 2xx\n", "C ability operations", (unsigned long long)c_total,
                (unsigned long long)c_acked);
    std::printf("    %-40s %12llu\n", "  2xx but never applied (LOST)", (unsigned long long)c_lost);
    std::printf("    %-40s %12llu\n", "  2xx but applied twice or more (DOUBLED)", (unsigned long long)c_doubled);
    std::printf("    %-40s %12llu\n", "  not 2xx, applied twice or more", (unsigned long long)c_doubled_unacked);
    std::printf("    %-40s %12llu\n", "  refused (422) yet applied", (unsigned long long)c_refused_applied);
    std::printf("    %-40s %12llu sent, %llu answered 2xx\n", "D progress events", (unsigned long long)d_total,
                (unsigned long long)d_acked);
    std::printf("    %-40s %12llu\n", "  2xx but not stored (LOST)", (unsigned long long)d_lost);
    std::printf("    %-40s %12llu\n", "  2xx, processed twice (re-sent)", (unsigned long long)d_reprocessed);
    std::printf("    %-40s %12llu\n", "  2xx \"duplicate\" for a fresh event", (unsigned long long)t.fresh_event_duplicate);
    std::printf("    %-40s %12llu\n", "  not 2xx, processed twice", (unsigned long long)d_reprocessed_unacked);
    std::printf("    %-40s %12llu\n", "applied writes nobody sent", (unsigned long long)unknown_applied);
  } else if (opts.upstream_port != 0) {
    std::printf("writes: the upstream's /__soak/state could not be read (no exactly-once check)\n");
  }
  std::printf("gateway process (pid %d):      %14s %14s %14s %12s\n", (int)opts.gateway_pid, "before load",
              "after warm-up", "after (idle)", "delta");
  std::printf("    %-40s %14s %14s %14s %12s\n", "RSS", kib(before.rss_kib).c_str(), kib(warm.rss_kib).c_str(),
              kib(after.rss_kib).c_str(),
              (after.rss_kib >= 0 && before.rss_kib >= 0) ? (std::to_string(after.rss_kib - before.rss_kib) + " KiB").c_str() : "n/a");
  std::printf("    %-40s %14s %14s %14s %12s\n", "open file descriptors", num(before.fds).c_str(), num(warm.fds).c_str(),
              num(after.fds).c_str(),
              (after.fds >= 0 && before.fds >= 0) ? std::to_string(after.fds - before.fds).c_str() : "n/a");
  std::printf("    %-40s %14s %14s %14s\n", "threads", num(before.threads).c_str(), num(warm.threads).c_str(),
              num(after.threads).c_str());
  if (!t.samples.empty() || !write_samples.empty()) {
    std::printf("first problems:\n");
    for (const auto& s : t.samples) std::printf("  %s\n", s.c_str());
    for (const auto& s : write_samples) std::printf("  %s\n", s.c_str());
  }

  const bool failed = t.unanswered() || t.doubled || t.crossed || t.wrong || c_lost || c_doubled || d_lost ||
                      d_reprocessed || unknown_applied || c_refused_applied ||
                      (opts.upstream_port != 0 && !state_checked);
  std::printf("client verdict: %s\n", failed ? "FAIL" : "pass");
  std::fflush(stdout);
  return failed ? 1 : 0;
}
