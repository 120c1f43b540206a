#include "tests/mock_upstream/mock_upstream.hpp"
#include "tests/mock_upstream/write_apis.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <charconv>
#include <ctime>
#include <deque>
#include <functional>
#include <iostream>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <thread>
#include <type_traits>
#include <utility>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

namespace batchgate::mock {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using json = nlohmann::ordered_json;
using string_response = http::response<http::string_body>;

constexpr std::size_t body_limit = 16 * 1024 * 1024;
constexpr std::size_t large_chunk_size = 64 * 1024;
constexpr std::size_t large_max_bytes = std::size_t{1} << 32;
constexpr std::size_t batch_max_ids = 100;

void fail(beast::error_code ec, const char* what) {
  // Aborts and resets are the normal end of a connection or of the server.
  if (ec == net::error::operation_aborted || ec == net::error::connection_reset ||
      ec == net::error::broken_pipe || ec == beast::error::timeout)
    return;
  std::cerr << "mock upstream: " << what << ": " << ec.message() << "\n";
}

std::string dump(const json& j) {
  // Echoed bodies may hold any bytes; never throw on the data path.
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Malformed escapes are kept literally, like most servers do.
std::string percent_decode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size()) {
      int hi = hex_value(s[i + 1]);
      int lo = hex_value(s[i + 2]);
      if (hi >= 0 && lo >= 0) {
        out.push_back(static_cast<char>(hi * 16 + lo));
        i += 2;
        continue;
      }
    }
    out.push_back(s[i]);
  }
  return out;
}

std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> parts;
  std::size_t start = 0;
  while (true) {
    std::size_t pos = s.find(sep, start);
    parts.push_back(s.substr(start, pos == std::string_view::npos ? pos : pos - start));
    if (pos == std::string_view::npos) break;
    start = pos + 1;
  }
  return parts;
}

// Decoded (name, value) pairs in order; repeated names are kept.
std::vector<std::pair<std::string, std::string>> parse_query(std::string_view query) {
  std::vector<std::pair<std::string, std::string>> out;
  if (query.empty()) return out;
  for (auto part : split(query, '&')) {
    if (part.empty()) continue;
    auto eq = part.find('=');
    if (eq == std::string_view::npos)
      out.emplace_back(percent_decode(part), std::string{});
    else
      out.emplace_back(percent_decode(part.substr(0, eq)), percent_decode(part.substr(eq + 1)));
  }
  return out;
}

std::optional<std::size_t> parse_number(std::string_view s) {
  std::size_t value = 0;
  if (s.empty() || (s.size() > 1 && s[0] == '0')) return std::nullopt;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ec != std::errc{} || ptr != s.data() + s.size()) return std::nullopt;
  return value;
}

std::string utc_now_iso8601() {
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// byte i of a /large body is 'a' + i % 26; any chunk is a window into this buffer.
const std::string& large_pattern() {
  static const std::string pattern = [] {
    std::string s(large_chunk_size + 26, '\0');
    for (std::size_t i = 0; i < s.size(); ++i) s[i] = static_cast<char>('a' + i % 26);
    return s;
  }();
  return pattern;
}

// ---------------------------------------------------------------------------------------
// The reference APIs, as pure functions of the request.

struct api {
  std::size_t user_count;

  std::optional<json> user(std::string_view id) const {
    auto n = parse_number(id);
    if (!n || *n < 1 || *n > user_count) return std::nullopt;
    return json{{"id", std::string(id)}, {"name", "user-" + std::string(id)}};
  }

  std::optional<json> activity(std::string_view id) const {
    if (id.size() < 2 || id[0] != 'a') return std::nullopt;
    auto n = parse_number(id.substr(1));
    if (!n || *n < 1 || *n > user_count) return std::nullopt;
    static constexpr const char* types[] = {"run", "ride", "swim"};
    return json{{"id", std::string(id)},
                {"name", "activity " + std::string(id)},
                {"type", types[(*n - 1) % 3]},
                {"distance_km", 5 * *n}};
  }

  // `fields` is a comma list; an empty list means every field.
  static json select_fields(const json& item, std::string_view fields) {
    if (fields.empty()) return item;
    std::set<std::string, std::less<>> wanted;
    for (auto f : split(fields, ',')) wanted.emplace(f);
    json out = json::object();
    for (auto it = item.begin(); it != item.end(); ++it)
      if (wanted.count(it.key())) out[it.key()] = it.value();
    return out;
  }
};

struct reply {
  http::status status = http::status::ok;
  std::string body;
  std::vector<std::pair<std::string, std::string>> extra_headers;
};

reply json_reply(http::status status, const json& body) { return {status, dump(body), {}}; }
reply error_reply(http::status status, std::string_view message) {
  return json_reply(status, json{{"error", message}});
}

// What a session does with one request once it holds a slot.
struct action {
  enum kind { respond, large, stall, close } what = respond;
  reply r;
  std::size_t large_bytes = 0;
};

// `owner`: with mock_options::tag_owner, the call's Authorization (else empty: no tag).
action route(const api& apis, detail::write_apis& writes, fault current_fault,
             const http::request<http::string_body>& req, std::string_view owner) {
  auto tag = [&](json& item) {
    if (!owner.empty()) item["owner"] = owner;
  };
  std::string_view target = req.target();
  auto qpos = target.find('?');
  std::string_view path = target.substr(0, qpos);
  std::string_view query = qpos == std::string_view::npos ? std::string_view{}
                                                          : target.substr(qpos + 1);
  const bool get = req.method() == http::verb::get;

  auto batch_fault = [&]() -> std::optional<action> {
    switch (current_fault) {
      case fault::none: return std::nullopt;
      case fault::status_500:
        return action{action::respond, error_reply(http::status::internal_server_error, "boom")};
      case fault::garbage: return action{action::respond, {http::status::ok, "{not json", {}}};
      case fault::deep_json:
        return action{action::respond, {http::status::ok, std::string(100000, '[') + std::string(100000, ']'), {}}};
      case fault::stall: return action{action::stall, {}};
      case fault::close_connection: return action{action::close, {}};
    }
    return std::nullopt;
  };

  if (path.starts_with("/echo")) {
    json headers = json::object();
    for (const auto& field : req) {
      auto name = lower(field.name_string());
      if (headers.contains(name))
        headers[name] = headers[name].get<std::string>() + ", " + std::string(field.value());
      else
        headers[name] = std::string(field.value());
    }
    return {action::respond,
            json_reply(http::status::ok, json{{"method", std::string(req.method_string())},
                                              {"target", std::string(target)},
                                              {"headers", std::move(headers)},
                                              {"body", req.body()}})};
  }

  // A: users.
  if (path == "/users") {
    if (!get) return {action::respond, error_reply(http::status::method_not_allowed, "method not allowed")};
    if (qpos == std::string_view::npos)
      return {action::respond, error_reply(http::status::bad_request, "ids or id query parameter required")};
    if (auto f = batch_fault()) return *f;
    std::vector<std::string> ids;
    for (auto& [name, value] : parse_query(query)) {
      if (name == "id") {
        ids.push_back(value);
      } else if (name == "ids") {
        for (auto id : split(value, ','))
          if (!id.empty()) ids.emplace_back(id);
      }
    }
    // Reversed, and once per id, so that clients must match items by key.
    json out = json::array();
    std::set<std::string, std::less<>> seen;
    for (auto it = ids.rbegin(); it != ids.rend(); ++it) {
      if (!seen.insert(*it).second) continue;
      if (auto u = apis.user(*it)) {
        tag(*u);
        out.push_back(std::move(*u));
      }
    }
    return {action::respond, json_reply(http::status::ok, out)};
  }
  if (path.starts_with("/users/") && path.find('/', 7) == std::string_view::npos) {
    if (!get) return {action::respond, error_reply(http::status::method_not_allowed, "method not allowed")};
    if (auto u = apis.user(percent_decode(path.substr(7)))) {
      tag(*u);
      return {action::respond, json_reply(http::status::ok, *u)};
    }
    return {action::respond, error_reply(http::status::not_found, "not found")};
  }

  // B: activities.
  constexpr std::string_view activities_prefix = "/api/v1/activities/";
  if (path.starts_with(activities_prefix) &&
      path.find('/', activities_prefix.size()) == std::string_view::npos) {
    if (!get) return {action::respond, error_reply(http::status::method_not_allowed, "method not allowed")};
    auto a = apis.activity(percent_decode(path.substr(activities_prefix.size())));
    if (!a) return {action::respond, error_reply(http::status::not_found, "not found")};
    std::string fields;
    for (auto& [name, value] : parse_query(query))
      if (name == "fields") fields = value;
    json selected = api::select_fields(*a, fields);
    tag(selected);
    return {action::respond, json_reply(http::status::ok, selected)};
  }
  if (path == "/api/v1/batch/get") {
    if (req.method() != http::verb::post)
      return {action::respond, error_reply(http::status::method_not_allowed, "method not allowed")};
    if (auto f = batch_fault()) return *f;
    auto bad = [](std::string_view why) {
      return action{action::respond, error_reply(http::status::bad_request, why)};
    };
    json in = json::parse(req.body(), nullptr, false);
    if (in.is_discarded() || !in.is_object()) return bad("body must be a JSON object");
    auto rt = in.find("resource_type");
    if (rt == in.end() || !rt->is_string() || *rt != "activities")
      return bad("resource_type must be \"activities\"");
    auto ids = in.find("ids");
    if (ids == in.end() || !ids->is_array()) return bad("ids must be an array of strings");
    if (ids->empty() || ids->size() > batch_max_ids) return bad("ids must hold 1 to 100 ids");
    std::string fields;
    if (auto f = in.find("fields"); f != in.end()) {
      if (!f->is_string()) return bad("fields must be a string");
      fields = f->get<std::string>();
    }
    json results = json::array();
    std::size_t succeeded = 0;
    for (const auto& id : *ids) {
      if (!id.is_string()) return bad("ids must be an array of strings");
      const auto& key = id.get_ref<const std::string&>();
      if (auto a = apis.activity(key)) {
        ++succeeded;
        json selected = api::select_fields(*a, fields);
        tag(selected);
        results.push_back(json{{"id", key}, {"status", "success"}, {"data", std::move(selected)}});
      } else {
        results.push_back(json{{"id", key}, {"status", "error"}, {"error", "not found"},
                               {"status_code", 404}});
      }
    }
    return {action::respond,
            json_reply(http::status::ok, json{{"results", std::move(results)},
                                              {"total_requested", ids->size()},
                                              {"total_succeeded", succeeded},
                                              {"total_failed", ids->size() - succeeded},
                                              {"processed_at", utc_now_iso8601()}})};
  }

  // C–F: the write APIs, with their own state.
  if (detail::write_apis::is_batch_path(path))
    if (auto f = batch_fault()) return *f;
  if (auto w = writes.handle(req.method_string(), path, req.body(), owner)) {
    reply r{static_cast<http::status>(w->status), std::move(w->body), std::move(w->headers)};
    return {action::respond, std::move(r)};
  }

  // Passthrough helpers.
  if (path == "/large" && get) {
    std::optional<std::size_t> bytes;
    for (auto& [name, value] : parse_query(query))
      if (name == "bytes") bytes = parse_number(value);
    if (!bytes || *bytes > large_max_bytes)
      return {action::respond, error_reply(http::status::bad_request, "bytes=N required (N <= 4 GiB)")};
    return {action::large, {}, *bytes};
  }
  if (path.starts_with("/status/") && get) {
    auto code = parse_number(path.substr(8));
    if (!code || *code < 200 || *code > 599)
      return {action::respond, error_reply(http::status::bad_request, "status must be 200..599")};
    auto status = static_cast<http::status>(*code);
    // These statuses must not carry a body.
    if (*code == 204 || *code == 304) return {action::respond, {status, {}, {}}};
    return {action::respond, json_reply(status, json{{"status", *code}})};
  }
  if (path == "/set-cookie" && get) {
    reply r = json_reply(http::status::ok, json{{"cookie", "set"}});
    r.extra_headers.emplace_back("Set-Cookie", "session=secret");
    return {action::respond, std::move(r)};
  }

  return {action::respond, error_reply(http::status::not_found, "no such endpoint")};
}

// ---------------------------------------------------------------------------------------
// Shared state: recorded calls, fault, and the FIFO of concurrency slots.

struct shared_state {
  explicit shared_state(mock_options o)
      : options(std::move(o)),
        apis{options.user_count},
        writes(options.single_rate_limit, options.state_endpoint, options.single_rate_window),
        random(options.fault_seed) {
    for (unsigned k = 0; k < static_cast<unsigned>(random_fault::count_); ++k)
      if (options.fault_kinds & (1u << k)) fault_kinds.push_back(static_cast<random_fault>(k));
  }

  const mock_options options;
  const api apis;
  detail::write_apis writes;  // thread-safe on its own
  std::atomic<fault> current_fault{fault::none};

  // Random per-call faults (options.fault_rate).
  std::mutex random_mutex;
  std::mt19937_64 random;
  std::vector<random_fault> fault_kinds;

  std::optional<random_fault> draw_fault() {
    if (options.fault_rate <= 0 || fault_kinds.empty()) return std::nullopt;
    std::lock_guard lock(random_mutex);
    if (std::uniform_real_distribution<double>(0, 1)(random) >= options.fault_rate) return std::nullopt;
    return fault_kinds[std::uniform_int_distribution<std::size_t>(0, fault_kinds.size() - 1)(random)];
  }
  std::chrono::milliseconds draw_slow() {
    std::lock_guard lock(random_mutex);
    const auto max = std::max<std::int64_t>(1, options.slow_max.count());
    return std::chrono::milliseconds(std::uniform_int_distribution<std::int64_t>(1, max)(random));
  }

  mutable std::mutex calls_mutex;
  std::vector<recorded_call> calls;

  // With options.state_endpoint: calls received, by write_apis::endpoint_name().
  std::mutex counts_mutex;
  std::map<std::string, std::uint64_t, std::less<>> call_counts;

  static bool is_state_request(const http::request<http::string_body>& req) {
    return req.method() == http::verb::get && req.target() == "/__soak/state";
  }
  void count_call(const http::request<http::string_body>& req) {
    if (!options.state_endpoint || is_state_request(req)) return;
    const std::string_view target = req.target();
    const auto name = detail::write_apis::endpoint_name(target.substr(0, target.find('?')));
    std::lock_guard lock(counts_mutex);
    auto it = call_counts.find(name);
    if (it == call_counts.end()) it = call_counts.emplace(std::string(name), 0).first;
    ++it->second;
  }
  json state() {
    json out = writes.applied();
    json counts = json::object();
    {
      std::lock_guard lock(counts_mutex);
      for (const auto& [name, n] : call_counts) counts[name] = n;
    }
    out["calls"] = std::move(counts);
    return out;
  }

  std::mutex slots_mutex;
  std::size_t active = 0;
  std::size_t peak = 0;
  std::deque<std::function<void()>> waiters;  // each posts to its session's strand

  void record(const http::request<http::string_body>& req) {
    recorded_call c;
    c.method = std::string(req.method_string());
    c.target = std::string(req.target());
    c.path = c.target.substr(0, c.target.find('?'));
    c.body = req.body();
    for (const auto& field : req) {
      auto name = lower(field.name_string());
      auto [it, inserted] = c.headers.emplace(name, std::string(field.value()));
      if (!inserted) it->second += ", " + std::string(field.value());
    }
    std::lock_guard lock(calls_mutex);
    calls.push_back(std::move(c));
  }

  // `granted` runs once a slot is free: now, or when an earlier call releases one.
  void acquire(std::function<void()> granted) {
    {
      std::lock_guard lock(slots_mutex);
      if (options.max_concurrent != 0 && active >= options.max_concurrent) {
        waiters.push_back(std::move(granted));
        return;
      }
      ++active;
      peak = std::max(peak, active);
    }
    granted();  // outside the lock (CP.22)
  }

  // hold() / release_held(): calls that reach their answer while holding wait here.
  mutable std::mutex hold_mutex;
  bool holding = false;
  std::vector<std::function<void()>> held;  // each posts to its session's strand

  // True if the call must wait: `resume` then runs at release_held().
  bool held_back(std::function<void()> resume) {
    std::lock_guard lock(hold_mutex);
    if (!holding) return false;
    held.push_back(std::move(resume));
    return true;
  }
  void release_held() {
    std::vector<std::function<void()>> go;
    {
      std::lock_guard lock(hold_mutex);
      holding = false;
      go.swap(held);
    }
    for (auto& resume : go) resume();  // outside the lock (CP.22)
  }

  void release() {
    std::function<void()> next;
    {
      std::lock_guard lock(slots_mutex);
      if (waiters.empty()) {
        --active;
        return;
      }
      // The slot passes straight to the oldest waiter; `active` is unchanged.
      next = std::move(waiters.front());
      waiters.pop_front();
    }
    next();
  }
};

// ---------------------------------------------------------------------------------------
// One connection. Runs on its own strand; every handler holds shared_from_this().

class session : public std::enable_shared_from_this<session> {
 public:
  session(tcp::socket&& socket, std::shared_ptr<shared_state> state)
      : stream_(std::move(socket)), timer_(stream_.get_executor()), state_(std::move(state)) {}

  void run() {
    // Start on the strand so no handler of this session ever runs concurrently.
    net::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->do_read(); });
  }

 private:
  void do_read() {
    parser_.emplace();
    parser_->body_limit(body_limit);
    // Batch calls with thousands of ids in the query string (the benchmark's drain flush).
    parser_->header_limit(1024 * 1024);
    // Like many servers (Node's 5 s keepAliveTimeout), close keep-alive connections left idle.
    if (state_->options.idle_close.count() > 0) stream_.expires_after(state_->options.idle_close);
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code ec, std::size_t) {
                       self->on_read(ec);
                     });
  }

  void on_read(beast::error_code ec) {
    if (ec == http::error::end_of_stream) {
      stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
      return;
    }
    if (ec == http::error::body_limit) {
      // Too large to answer normally; say so and close.
      res_ = {};
      res_.version(11);
      res_.result(http::status::payload_too_large);
      res_.set(http::field::content_type, "application/json");
      res_.body() = R"({"error":"body larger than 16 MiB"})";
      res_.keep_alive(false);
      res_.prepare_payload();
      http::async_write(stream_, res_, [self = shared_from_this()](beast::error_code, std::size_t) {
        beast::error_code ignored;
        self->stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
      });
      return;
    }
    if (ec) return fail(ec, "read");
    stream_.expires_never();

    req_ = parser_->release();
    if (state_->options.record_calls) state_->record(req_);
    state_->count_call(req_);
    // Wait for a concurrency slot; the grant may come from another connection's thread.
    state_->acquire([self = shared_from_this()] {
      net::post(self->stream_.get_executor(), [self] { self->on_slot(); });
    });
  }

  void on_slot() {
    if (state_->options.latency.count() == 0) return on_latency({});
    // Model the upstream's cost per call without blocking a thread.
    timer_.expires_after(state_->options.latency);
    timer_.async_wait([self = shared_from_this()](beast::error_code ec) { self->on_latency(ec); });
  }

  void on_latency(beast::error_code ec) {
    if (ec) return;  // server stopping
    if (state_->held_back([self = shared_from_this()] {
          net::post(self->stream_.get_executor(), [self] { self->on_latency({}); });
        }))
      return;
    const auto& options = state_->options;
    if (options.state_endpoint && shared_state::is_state_request(req_)) {
      state_->release();
      return send(json_reply(http::status::ok, state_->state()));
    }
    auto random = state_->draw_fault();
    if (random && !applies_first(*random)) {
      state_->release();
      return fail_before(*random);
    }
    const std::string owner = options.tag_owner ? std::string(req_[http::field::authorization]) : std::string();
    action a = route(state_->apis, state_->writes, state_->current_fault.load(), req_, owner);
    // The call's cost is paid; writing the answer does not hold a slot, so that N slots
    // and a latency L give N / L calls per second.
    state_->release();
    if (random && a.what == action::respond) return fail_after(*random, std::move(a.r));
    switch (a.what) {
      case action::respond: return send(std::move(a.r));
      case action::large: return send_large(a.large_bytes);
      case action::close: {
        beast::error_code ignored;
        stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
        stream_.socket().close(ignored);
        return;
      }
      case action::stall:
        // Keep the connection open and silent; stop() destroys the wait and closes it.
        timer_.expires_at(net::steady_timer::time_point::max());
        timer_.async_wait([self = shared_from_this()](beast::error_code) {});
        return;
    }
  }

  // --- Random faults (mock_options::fault_rate). ---

  static bool applies_first(random_fault f) {
    switch (f) {
      case random_fault::reset_after:
      case random_fault::stall_after:
      case random_fault::late:
      case random_fault::truncated:
      case random_fault::slow:
      case random_fault::extra:
      case random_fault::extra_late: return true;
      default: return false;
    }
  }

  // The call is not handled: nothing is applied.
  void fail_before(random_fault f) {
    switch (f) {
      case random_fault::reset: return reset();
      case random_fault::close: {
        beast::error_code ignored;
        stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
        stream_.socket().close(ignored);
        return;
      }
      case random_fault::stall: return stall_until_peer_closes();
      case random_fault::garbage: return send({http::status::ok, "{not json", {}});
      case random_fault::status_429: {
        reply r = error_reply(http::status::too_many_requests, "rate limited");
        r.extra_headers.emplace_back("Retry-After", "0");
        return send(std::move(r));
      }
      case random_fault::status_500: return send(error_reply(http::status::internal_server_error, "boom"));
      case random_fault::status_503: return send(error_reply(http::status::service_unavailable, "unavailable"));
      default: return reset();
    }
  }

  // The call was handled (a write is applied); its answer `r` is lost, late or cut.
  void fail_after(random_fault f, reply r) {
    switch (f) {
      case random_fault::reset_after: return reset();
      case random_fault::stall_after: return stall_until_peer_closes();
      case random_fault::truncated: return send_truncated(std::move(r));
      case random_fault::extra:
      case random_fault::extra_late: return send_with_extra(std::move(r), f == random_fault::extra_late);
      case random_fault::late:
      case random_fault::slow: {
        delayed_ = std::move(r);
        timer_.expires_after(f == random_fault::late ? state_->options.stall_for : state_->draw_slow());
        timer_.async_wait([self = shared_from_this()](beast::error_code ec) {
          if (!ec) self->send(std::move(self->delayed_));
        });
        return;
      }
      default: return reset();
    }
  }

  void reset() {
    // SO_LINGER 0: close() sends RST instead of FIN.
    beast::error_code ignored;
    stream_.socket().set_option(net::socket_base::linger(true, 0), ignored);
    stream_.socket().close(ignored);
  }

  void stall_until_peer_closes() {
    // Say nothing; a read that ends when the peer gives up keeps stalled sockets from piling up.
    stream_.async_read_some(net::buffer(sink_), [self = shared_from_this()](beast::error_code, std::size_t) {
      beast::error_code ignored;
      self->stream_.socket().close(ignored);
    });
  }

  void send_truncated(reply r) {
    if (r.body.size() < 2) return reset();
    raw_ = "HTTP/1.1 " + std::to_string(static_cast<unsigned>(r.status)) + " " +
           std::string(http::obsolete_reason(r.status)) +
           "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(r.body.size()) +
           "\r\n\r\n" + r.body.substr(0, r.body.size() / 2);
    net::async_write(stream_, net::buffer(raw_), [self = shared_from_this()](beast::error_code, std::size_t) {
      beast::error_code ignored;
      self->stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
      self->stream_.socket().close(ignored);
    });
  }

  // The answer as raw bytes (HTTP/1.1, Content-Length framing).
  std::string serialize(const reply& r, bool keep_alive) const {
    std::string out = "HTTP/1.1 " + std::to_string(static_cast<unsigned>(r.status)) + " " +
                      std::string(http::obsolete_reason(r.status)) + "\r\nContent-Type: application/json\r\n";
    for (const auto& [name, value] : r.extra_headers) out += name + ": " + value + "\r\n";
    if (!keep_alive) out += "Connection: close\r\n";
    return out + "Content-Length: " + std::to_string(r.body.size()) + "\r\n\r\n" + r.body;
  }

  void send_with_extra(reply r, bool late) {
    reply intruder = r;
    const std::string owner(req_[http::field::authorization]);
    for (std::size_t pos = 0; !owner.empty() && (pos = intruder.body.find(owner, pos)) != std::string::npos;)
      intruder.body.replace(pos, owner.size(), "intruder"), pos += 8;
    const bool keep_alive = req_.keep_alive();
    raw_ = serialize(r, keep_alive);
    extra_ = serialize(intruder, keep_alive);
    if (!late) raw_ += extra_;
    net::async_write(stream_, net::buffer(raw_), [self = shared_from_this(), late, keep_alive](beast::error_code ec, std::size_t) {
      if (ec) return;
      if (!late) return self->on_write(ec, keep_alive);
      // Go on reading requests; the unrequested answer follows on the idle connection.
      self->extra_timer_.expires_after(std::chrono::milliseconds(5));
      self->extra_timer_.async_wait([self](beast::error_code ec) {
        if (ec) return;
        net::async_write(self->stream_.socket(), net::buffer(self->extra_), [self](beast::error_code, std::size_t) {});
      });
      self->on_write(ec, keep_alive);
    });
  }

  void send(reply r) {
    res_ = {};
    res_.version(req_.version());
    res_.result(r.status);
    res_.set(http::field::content_type, "application/json");
    for (auto& [name, value] : r.extra_headers) res_.insert(name, value);
    res_.body() = std::move(r.body);
    res_.keep_alive(req_.keep_alive());
    res_.prepare_payload();
    http::async_write(stream_, res_,
                      [self = shared_from_this()](beast::error_code ec, std::size_t) {
                        self->on_write(ec, self->res_.keep_alive());
                      });
  }

  void send_large(std::size_t bytes) {
    large_res_.emplace(http::status::ok, req_.version());
    large_res_->set(http::field::content_type, "application/octet-stream");
    large_res_->keep_alive(req_.keep_alive());
    large_res_->chunked(true);
    large_sr_.emplace(*large_res_);
    large_sent_ = 0;
    large_total_ = bytes;
    http::async_write_header(stream_, *large_sr_,
                             [self = shared_from_this()](beast::error_code ec, std::size_t) {
                               self->on_large_write(ec);
                             });
  }

  void on_large_write(beast::error_code ec) {
    if (ec) return on_write(ec, false);
    if (large_sent_ == large_total_) {
      // Header written for an empty body, or the last data chunk: finish the message.
      large_sent_ = large_total_ + 1;
      net::async_write(stream_, http::make_chunk_last(),
                       [self = shared_from_this()](beast::error_code ec, std::size_t) {
                         self->on_write(ec, self->large_res_->keep_alive());
                       });
      return;
    }
    std::size_t n = std::min(large_chunk_size, large_total_ - large_sent_);
    net::const_buffer chunk(large_pattern().data() + large_sent_ % 26, n);
    large_sent_ += n;
    net::async_write(stream_, http::make_chunk(chunk),
                     [self = shared_from_this()](beast::error_code ec, std::size_t) {
                       self->on_large_write(ec);
                     });
  }

  void on_write(beast::error_code ec, bool keep_alive) {
    if (ec) return fail(ec, "write");
    if (!keep_alive) {
      stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
      return;
    }
    do_read();
  }

  beast::tcp_stream stream_;
  net::steady_timer timer_;
  std::shared_ptr<shared_state> state_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  http::request<http::string_body> req_;
  string_response res_;
  std::optional<http::response<http::empty_body>> large_res_;
  std::optional<http::response_serializer<http::empty_body>> large_sr_;
  std::size_t large_sent_ = 0;
  std::size_t large_total_ = 0;
  reply delayed_;            // random_fault::late / slow
  std::string raw_;          // random_fault::truncated, extra
  std::string extra_;        // random_fault::extra_late
  net::steady_timer extra_timer_{stream_.get_executor()};
  std::array<char, 64> sink_;  // random_fault::stall / stall_after
};

// Accepts connections and gives each one its own strand.
class listener : public std::enable_shared_from_this<listener> {
 public:
  listener(net::io_context& ioc, tcp::endpoint endpoint, std::shared_ptr<shared_state> state)
      : ioc_(ioc), acceptor_(net::make_strand(ioc)), state_(std::move(state)) {
    acceptor_.open(endpoint.protocol());
    acceptor_.set_option(net::socket_base::reuse_address(true));
    acceptor_.bind(endpoint);
    acceptor_.listen(net::socket_base::max_listen_connections);
  }

  std::uint16_t port() const { return acceptor_.local_endpoint().port(); }

  void run() { do_accept(); }

 private:
  void do_accept() {
    acceptor_.async_accept(net::make_strand(ioc_),
                           [self = shared_from_this()](beast::error_code ec, tcp::socket socket) {
                             self->on_accept(ec, std::move(socket));
                           });
  }

  void on_accept(beast::error_code ec, tcp::socket socket) {
    if (ec == net::error::operation_aborted) return;
    if (ec) {
      fail(ec, "accept");
    } else {
      socket.set_option(tcp::no_delay(true), ec);
      std::make_shared<session>(std::move(socket), state_)->run();
    }
    do_accept();
  }

  net::io_context& ioc_;
  tcp::acceptor acceptor_;
  std::shared_ptr<shared_state> state_;
};

}  // namespace

struct mock_upstream::impl {
  explicit impl(mock_options options)
      : state(std::make_shared<shared_state>(std::move(options))),
        ioc(std::make_unique<net::io_context>(
            static_cast<int>(std::max(1u, state->options.threads)))) {
    auto address = net::ip::make_address(state->options.address);
    auto l = std::make_shared<listener>(*ioc, tcp::endpoint{address, state->options.port}, state);
    bound_port = l->port();
    l->run();
    for (unsigned i = 0; i < std::max(1u, state->options.threads); ++i)
      threads.emplace_back([this] { ioc->run(); });
  }

  void stop() {
    std::lock_guard lock(stop_mutex);
    if (!ioc) return;
    ioc->stop();
    for (auto& t : threads) t.join();
    threads.clear();
    // Sessions queued for a slot or held hold sockets: drop them while the io_context still
    // lives (outside the lock: a session's destructor must not run under it).
    auto drop = [](std::mutex& m, auto& sessions) {
      std::decay_t<decltype(sessions)> taken;
      {
        std::lock_guard lock(m);
        taken.swap(sessions);
      }
    };
    drop(state->slots_mutex, state->waiters);
    drop(state->hold_mutex, state->held);
    // Destroying the io_context destroys every pending handler, so every session (stalled
    // ones included) and the listener close their sockets.
    ioc.reset();
  }

  std::shared_ptr<shared_state> state;
  std::unique_ptr<net::io_context> ioc;
  std::vector<std::thread> threads;
  std::uint16_t bound_port = 0;
  std::mutex stop_mutex;
};

mock_upstream::mock_upstream(mock_options options)
    : impl_(std::make_unique<impl>(std::move(options))) {}

mock_upstream::~mock_upstream() { stop(); }

std::uint16_t mock_upstream::port() const { return impl_->bound_port; }

std::vector<recorded_call> mock_upstream::calls() const {
  std::lock_guard lock(impl_->state->calls_mutex);
  return impl_->state->calls;
}

std::size_t mock_upstream::count(std::string_view method, std::string_view path) const {
  std::lock_guard lock(impl_->state->calls_mutex);
  return static_cast<std::size_t>(
      std::count_if(impl_->state->calls.begin(), impl_->state->calls.end(),
                    [&](const recorded_call& c) { return c.method == method && c.path == path; }));
}

void mock_upstream::clear() {
  {
    std::lock_guard lock(impl_->state->calls_mutex);
    impl_->state->calls.clear();
  }
  {
    std::lock_guard lock(impl_->state->slots_mutex);
    impl_->state->peak = impl_->state->active;
  }
  impl_->state->writes.reset();
}

void mock_upstream::set_fault(fault f) { impl_->state->current_fault.store(f); }

void mock_upstream::hold() {
  std::lock_guard lock(impl_->state->hold_mutex);
  impl_->state->holding = true;
}

void mock_upstream::release_held() { impl_->state->release_held(); }

std::size_t mock_upstream::held() const {
  std::lock_guard lock(impl_->state->hold_mutex);
  return impl_->state->held.size();
}

std::size_t mock_upstream::max_observed_concurrency() const {
  std::lock_guard lock(impl_->state->slots_mutex);
  return impl_->state->peak;
}

void mock_upstream::set_progress_rate_limit(std::size_t calls, std::string retry_after) {
  impl_->state->writes.set_progress_rate_limit(calls, std::move(retry_after));
}

std::size_t mock_upstream::rate_limited_count() const { return impl_->state->writes.rate_limited_count(); }

void mock_upstream::seed_document(const std::string& ws, const std::string& doc_id, std::uint64_t version) {
  impl_->state->writes.seed_document(ws, doc_id, version);
}

void mock_upstream::seed_goal(const std::string& org, const std::string& goal_id, const std::string& period_id,
                              const std::string& type, double weight) {
  impl_->state->writes.seed_goal(org, goal_id, period_id, type, weight);
}

std::optional<ability_state> mock_upstream::ability(std::string_view character_id,
                                                    std::int64_t ability_id) const {
  return impl_->state->writes.ability(character_id, ability_id);
}

bool mock_upstream::progress_event_seen(std::string_view client_event_id) const {
  return impl_->state->writes.progress_event_seen(client_event_id);
}

std::optional<document_state> mock_upstream::document(std::string_view ws, std::string_view doc_id) const {
  return impl_->state->writes.document(ws, doc_id);
}

std::optional<std::string> mock_upstream::goal(std::string_view org, std::string_view goal_id) const {
  return impl_->state->writes.goal(org, goal_id);
}

void mock_upstream::stop() { impl_->stop(); }

}  // namespace batchgate::mock
