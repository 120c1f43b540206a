#include "tests/mock_upstream/write_apis.hpp"

#include <algorithm>
#include <cmath>

namespace batchgate::mock::detail {
namespace {

using json = write_apis::json;
using clock_type = std::chrono::steady_clock;

constexpr std::size_t progress_max_events = 25;
constexpr std::size_t progress_max_bytes = 65'536;  // "body at most 64 KB": 64 KiB, the larger reading
constexpr std::size_t documents_max_ops = 100;
constexpr std::size_t documents_max_bytes = 10'000'000;  // 10 MB

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

write_reply reply(unsigned status, const json& body) { return {status, dump(body), {}}; }
write_reply error(unsigned status, std::string_view message) {
  return reply(status, json{{"error", message}});
}
write_reply method_not_allowed() { return error(405, "method not allowed"); }

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string percent_decode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && hex_value(s[i + 1]) >= 0 && hex_value(s[i + 2]) >= 0) {
      out.push_back(static_cast<char>(hex_value(s[i + 1]) * 16 + hex_value(s[i + 2])));
      i += 2;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

// "/a/b/c" -> {"a","b","c"}, decoded. An empty segment (e.g. "//", trailing "/") stays empty.
std::vector<std::string> segments(std::string_view path) {
  std::vector<std::string> out;
  if (path.empty() || path[0] != '/') return out;
  std::size_t start = 1;
  while (true) {
    auto pos = path.find('/', start);
    out.push_back(percent_decode(path.substr(start, pos == std::string_view::npos ? pos : pos - start)));
    if (pos == std::string_view::npos) break;
    start = pos + 1;
  }
  return out;
}

bool is(const std::vector<std::string>& segs, std::initializer_list<std::string_view> pattern) {
  // "*" matches any non-empty segment.
  if (segs.size() != pattern.size()) return false;
  std::size_t i = 0;
  for (auto p : pattern) {
    if (p == "*" ? segs[i].empty() : segs[i] != p) return false;
    ++i;
  }
  return true;
}

json parse(std::string_view body) { return json::parse(body, nullptr, false); }

bool nonempty_string(const json& j, std::string_view name) {
  auto it = j.find(name);
  return it != j.end() && it->is_string() && !it->get_ref<const std::string&>().empty();
}

std::optional<std::int64_t> parse_int(std::string_view s) {
  if (s.empty() || s.size() > 18 || s.find_first_not_of("0123456789") != std::string_view::npos)
    return std::nullopt;
  return std::stoll(std::string(s));
}

// ---- C -------------------------------------------------------------------------------------

struct ability_op {
  std::int64_t ability_id = 0;
  bool increment = true;
  std::int64_t score = 0;
  std::int64_t experience_points = 0;
};

// nullopt + message when invalid: "invalid action" or "invalid operation".
std::optional<ability_op> parse_ability_op(const json& action, const json* data, std::string& why) {
  ability_op op;
  if (!action.is_string() || (action != "increment" && action != "decrement")) {
    why = "invalid action";
    return std::nullopt;
  }
  op.increment = action == "increment";
  why = "invalid operation";
  if (!data || !data->is_object()) return std::nullopt;
  for (auto [field, target] : {std::pair{"score", &op.score}, std::pair{"experience_points", &op.experience_points}}) {
    auto it = data->find(field);
    if (it == data->end()) continue;
    if (!it->is_number_integer()) return std::nullopt;
    *target = it->get<std::int64_t>();
  }
  return op;
}

void apply(ability_state& s, const ability_op& op) {
  const std::int64_t sign = op.increment ? 1 : -1;
  s.score += sign * op.score;
  s.experience_points += sign * op.experience_points;
}

// ---- D -------------------------------------------------------------------------------------

bool valid_event(const json& e) {
  if (!e.is_object()) return false;
  if (!nonempty_string(e, "clientEventId") || !nonempty_string(e, "type") || !nonempty_string(e, "userId"))
    return false;
  if (auto it = e.find("percent"); it != e.end()) {
    if (!it->is_number()) return false;
    const double p = it->get<double>();
    if (!(p >= 0 && p <= 100)) return false;
  }
  return true;
}

// ---- E -------------------------------------------------------------------------------------

json document_json(const std::string& id, const auto& d) {
  return json{{"id", id}, {"title", d.title}, {"content", d.content}, {"version", d.version}};
}

// The title/content of a create or update body; false when a present field has the wrong type
// or a create has no title.
template <class Doc>
bool read_fields(const json& data, Doc& d, bool need_title) {
  if (!data.is_object()) return false;
  auto title = data.find("title");
  if (title == data.end()) {
    if (need_title) return false;
  } else if (!title->is_string()) {
    return false;
  } else {
    d.title = title->get<std::string>();
  }
  if (auto content = data.find("content"); content != data.end()) {
    if (!content->is_string()) return false;
    d.content = content->get<std::string>();
  }
  return true;
}

std::optional<std::uint64_t> version_of(const json& data) {
  if (!data.is_object()) return std::nullopt;
  auto it = data.find("version");
  if (it == data.end() || !it->is_number_unsigned()) return std::nullopt;
  return it->get<std::uint64_t>();
}

// ---- F -------------------------------------------------------------------------------------

std::optional<std::string> goal_error(const json& type, const json& data) {
  if (!type.is_string() || (type != "performance" && type != "competency")) return "invalid type";
  if (auto w = data.find("weight"); w != data.end()) {
    if (!w->is_number()) return "weight out of range";
    const double v = w->get<double>();
    if (!(v >= 0 && v <= 100)) return "weight out of range";
  }
  return std::nullopt;
}

// {"id","period_id","type", ...the other fields of `data`, over those of `base`}.
json goal_json(const std::string& id, const json& period_id, const json& type, const json& data,
               const json* base = nullptr) {
  json g{{"id", id}, {"period_id", period_id}, {"type", type}};
  auto copy = [&](const json& from) {
    for (auto it = from.begin(); it != from.end(); ++it)
      if (it.key() != "id" && it.key() != "period_id" && it.key() != "type") g[it.key()] = it.value();
  };
  if (base) copy(*base);
  copy(data);
  return g;
}

}  // namespace

std::string_view write_apis::endpoint_name(std::string_view path) {
  const auto s = segments(path);
  if (is(s, {"api", "characters", "*", "abilities", "batch"})) return "abilities_batch";
  if (is(s, {"api", "characters", "*", "abilities", "*"})) return "abilities_single";
  if (is(s, {"api", "client", "progress", "batch"})) return "progress_batch";
  if (is(s, {"api", "client", "progress"})) return "progress_single";
  if (is(s, {"api", "v1", "documents", "batch"})) return "documents_batch";
  if (is(s, {"api", "v1", "workspaces", "*", "documents"}) || is(s, {"api", "v1", "workspaces", "*", "documents", "*"}))
    return "documents_single";
  if (is(s, {"api", "v1", "org", "*", "goals", "batch-save"})) return "goals_batch";
  // A's read endpoints (counted for bench/scaleout.sh; "list", not "_batch": no write API's rules).
  if (is(s, {"users"})) return "users_list";
  if (is(s, {"users", "*"})) return "users_single";
  if (is(s, {"api", "v1", "org", "*", "goals"}) || is(s, {"api", "v1", "org", "*", "goals", "*"})) return "goals_single";
  return "other";
}

bool write_apis::is_batch_path(std::string_view path) { return endpoint_name(path).ends_with("_batch"); }

std::optional<write_reply> write_apis::handle(std::string_view method, std::string_view path,
                                              std::string_view body, std::string_view owner) {
  const auto s = segments(path);
  std::lock_guard lock(mutex_);

  // C: abilities.
  if (is(s, {"api", "characters", "*", "abilities", "batch"})) {
    if (method != "POST") return method_not_allowed();
    return ability_batch(s[2], body, owner);
  }
  if (is(s, {"api", "characters", "*", "abilities", "*"})) {
    if (method != "PATCH") return method_not_allowed();
    return ability_single(s[2], s[4], body, owner);
  }

  // D: progress events.
  if (is(s, {"api", "client", "progress"})) {
    if (method != "POST") return method_not_allowed();
    return progress_single(body);
  }
  if (is(s, {"api", "client", "progress", "batch"})) {
    if (method != "POST") return method_not_allowed();
    return progress_batch(body);
  }

  // E: documents.
  if (is(s, {"api", "v1", "documents", "batch"})) {
    if (method != "POST") return method_not_allowed();
    return document_batch(body);
  }
  if (is(s, {"api", "v1", "workspaces", "*", "documents"})) {
    if (method != "POST") return method_not_allowed();
    return document_create(s[3], body);
  }
  if (is(s, {"api", "v1", "workspaces", "*", "documents", "*"})) {
    if (method == "PUT") return document_update(s[3], s[5], body);
    if (method == "DELETE") return document_delete(s[3], s[5]);
    return method_not_allowed();
  }

  // F: goals.
  if (is(s, {"api", "v1", "org", "*", "goals", "batch-save"})) {
    if (method != "POST") return method_not_allowed();
    return goal_batch(s[3], body);
  }
  if (is(s, {"api", "v1", "org", "*", "goals"})) {
    if (method != "POST") return method_not_allowed();
    return goal_save(s[3], nullptr, body);
  }
  if (is(s, {"api", "v1", "org", "*", "goals", "*"})) {
    if (method != "PUT") return method_not_allowed();
    return goal_save(s[3], &s[5], body);
  }
  return std::nullopt;
}

// ---- C -------------------------------------------------------------------------------------

write_apis::json write_apis::ability_json(const std::string& cid, std::int64_t aid,
                                          std::string_view owner) const {
  ability_state st;
  if (auto it = abilities_.find({cid, aid}); it != abilities_.end()) st = it->second;
  json out{{"id", aid},
           {"ability_name", "Ability " + std::to_string(aid)},
           {"score", st.score},
           {"effective_score", st.score + 1},
           {"experience_points", st.experience_points}};
  if (!owner.empty()) out["owner"] = owner;
  return out;
}

void write_apis::note_op_applied(const json* data) {
  if (!track_applied_ || !data || !data->is_object()) return;
  auto id = data->find("opId");
  if (id != data->end() && id->is_string()) ++applied_ops_[id->get<std::string>()];
}

void write_apis::note_event_processed(const std::string& id) {
  if (track_applied_) ++processed_events_[id];
}

write_apis::json write_apis::applied() const {
  std::lock_guard lock(mutex_);
  json ops = json::object(), events = json::object();
  for (const auto& [id, n] : applied_ops_) ops[id] = n;
  for (const auto& [id, n] : processed_events_) events[id] = n;
  json abilities = json::object();
  for (const auto& [key, st] : abilities_)
    abilities[key.first + "/" + std::to_string(key.second)] =
        json{{"score", st.score}, {"experience_points", st.experience_points}};
  return json{{"ability_ops", std::move(ops)}, {"progress_events", std::move(events)}, {"abilities", std::move(abilities)}};
}

write_reply write_apis::ability_single(const std::string& cid, std::string_view aid_text,
                                       std::string_view body, std::string_view owner) {
  if (single_rate_limit_ != 0) {
    const auto now = clock_type::now();
    while (!single_arrivals_.empty() && now - single_arrivals_.front() >= single_rate_window_)
      single_arrivals_.pop_front();
    single_arrivals_.push_back(now);
    if (single_arrivals_.size() > single_rate_limit_) {
      ++rate_limited_;
      write_reply r = error(429, "too many requests");
      r.headers.emplace_back("Retry-After", "1");
      return r;
    }
  }
  auto aid = parse_int(aid_text);
  if (!aid) return error(404, "not found");
  json in = parse(body);
  std::string why;
  std::optional<ability_op> op;
  if (in.is_object()) {
    auto data = in.find("data");
    op = parse_ability_op(in.contains("action") ? in["action"] : json(), data == in.end() ? nullptr : &*data, why);
  }
  if (!op) return error(422, "invalid operation");
  apply(abilities_[{cid, *aid}], *op);
  auto data = in.find("data");
  note_op_applied(data == in.end() ? nullptr : &*data);
  return reply(200, ability_json(cid, *aid, owner));
}

write_reply write_apis::ability_batch(const std::string& cid, std::string_view body,
                                      std::string_view owner) {
  json in = parse(body);
  if (!in.is_object() || !in.contains("operations") || !in["operations"].is_array() || in["operations"].empty())
    return error(400, "operations must be a non-empty array");
  const json& ops = in["operations"];

  // Validation does not depend on the state: check every operation, then apply them all.
  std::vector<ability_op> parsed;
  for (const auto& o : ops) {
    std::string why = "invalid operation";
    std::optional<ability_op> op;
    if (o.is_object()) {
      auto data = o.find("data");
      op = parse_ability_op(o.contains("action") ? o["action"] : json(), data == o.end() ? nullptr : &*data, why);
      if (op) {
        auto id = o.find("abilityId");
        if (id != o.end() && id->is_number_integer()) {
          op->ability_id = id->get<std::int64_t>();
        } else {
          op.reset();
          why = "invalid operation";
        }
      }
    }
    if (!op) {
      auto field = [&](const char* name) {
        return o.is_object() && o.contains(name) ? o[name] : json();
      };
      json entry{{"abilityId", field("abilityId")}, {"action", field("action")}, {"success", false}, {"error", why}};
      return reply(422, json{{"status", "error"}, {"results", json::array({std::move(entry)})}});
    }
    parsed.push_back(*op);
  }

  json results = json::array();
  std::size_t i = 0;
  for (const auto& op : parsed) {
    apply(abilities_[{cid, op.ability_id}], op);
    auto data = ops[i].find("data");
    note_op_applied(data == ops[i].end() ? nullptr : &*data);
    results.push_back(json{{"abilityId", op.ability_id},
                           {"action", ops[i++]["action"]},
                           {"success", true},
                           {"data", ability_json(cid, op.ability_id, owner)}});
  }
  return reply(200, json{{"status", "success"}, {"results", std::move(results)}});
}

// ---- D -------------------------------------------------------------------------------------

write_reply write_apis::progress_single(std::string_view body) {
  json e = parse(body);
  if (!valid_event(e)) return error(422, "validation_error");
  note_event_processed(e["clientEventId"].get<std::string>());
  if (!seen_events_.insert(e["clientEventId"].get<std::string>()).second)
    return reply(200, json{{"status", "duplicate"}});
  return reply(202, json{{"status", "accepted"}});
}

write_reply write_apis::progress_batch(std::string_view body) {
  if (progress_limit_left_ > 0) {
    --progress_limit_left_;
    ++rate_limited_;
    write_reply r = error(429, "rate limited");
    r.headers.emplace_back("Retry-After", progress_retry_after_);
    return r;
  }
  if (body.size() > progress_max_bytes) return error(413, "batch larger than 64 KB");
  json in = parse(body);
  if (!in.is_object() || !in.contains("events") || !in["events"].is_array() || in["events"].empty())
    return error(400, "events must be a non-empty array");
  if (in["events"].size() > progress_max_events) return error(413, "at most 25 events per batch");

  json accepted = json::array(), duplicates = json::array(), failed = json::array();
  for (const auto& e : in["events"]) {
    if (!valid_event(e)) {
      json id = e.is_object() && e.contains("clientEventId") ? e["clientEventId"] : json();
      failed.push_back(json{{"id", std::move(id)}, {"reason", "validation_error"}});
      continue;
    }
    const auto& id = e["clientEventId"].get_ref<const std::string&>();
    note_event_processed(id);
    (seen_events_.insert(id).second ? accepted : duplicates).push_back(id);
  }
  return reply(200, json{{"accepted", std::move(accepted)},
                         {"duplicates", std::move(duplicates)},
                         {"failed", std::move(failed)}});
}

// ---- E -------------------------------------------------------------------------------------

std::string write_apis::new_document_id(const workspace& docs) {
  std::string id;
  do id = "doc_" + std::to_string(next_document_++);
  while (docs.count(id));
  return id;
}

write_reply write_apis::document_create(const std::string& ws, std::string_view body) {
  stored_document d;
  if (!read_fields(parse(body), d, true)) return error(422, "invalid document");
  auto& docs = documents_[ws];
  auto id = new_document_id(docs);
  auto& stored = docs[id] = std::move(d);
  return reply(201, document_json(id, stored));
}

write_reply write_apis::document_update(const std::string& ws, const std::string& doc_id,
                                        std::string_view body) {
  auto w = documents_.find(ws);
  if (w == documents_.end() || !w->second.count(doc_id)) return error(404, "document not found");
  stored_document& d = w->second.find(doc_id)->second;
  json in = parse(body);
  auto version = version_of(in);
  if (!version) return error(400, "version required");
  if (*version != d.version) return error(409, "version mismatch");
  stored_document updated = d;
  if (!read_fields(in, updated, false)) return error(422, "invalid document");
  ++updated.version;
  d = std::move(updated);
  return reply(200, document_json(doc_id, d));
}

write_reply write_apis::document_delete(const std::string& ws, const std::string& doc_id) {
  auto w = documents_.find(ws);
  if (w == documents_.end() || w->second.erase(doc_id) == 0) return error(404, "document not found");
  return {204, {}, {}};
}

write_reply write_apis::document_batch(std::string_view body) {
  const auto started = clock_type::now();
  if (body.size() > documents_max_bytes) return error(413, "batch larger than 10 MB");
  json in = parse(body);
  if (!in.is_object()) return error(400, "body must be a JSON object");
  if (!nonempty_string(in, "workspace_id")) return error(400, "workspace_id must be a non-empty string");
  bool atomic = false;
  if (auto a = in.find("atomic"); a != in.end()) {
    if (!a->is_boolean()) return error(400, "atomic must be a boolean");
    atomic = a->get<bool>();
  }
  auto ops_it = in.find("operations");
  if (ops_it == in.end() || !ops_it->is_array() || ops_it->empty())
    return error(400, "operations must be a non-empty array");
  const json& ops = *ops_it;
  if (ops.size() > documents_max_ops) return error(400, "at most 100 operations per batch");
  std::set<std::string, std::less<>> client_ids;
  for (const auto& op : ops) {
    if (!op.is_object() || !nonempty_string(op, "client_id"))
      return error(400, "every operation needs a client_id string");
    if (!client_ids.insert(op["client_id"].get<std::string>()).second)
      return error(400, "duplicate client_id " + op["client_id"].get<std::string>());
  }

  const std::string ws = in["workspace_id"].get<std::string>();
  workspace& live = documents_[ws];
  workspace docs = live;  // committed below unless atomic and something failed
  std::vector<json> results(ops.size());
  auto result = [&](std::size_t i, std::string_view status, std::string_view message) {
    results[i] = json{{"client_id", ops[i]["client_id"]}, {"status", status}, {"error", message}};
  };
  auto doc_id_of = [&](const json& op) -> std::optional<std::string> {
    if (!nonempty_string(op, "document_id")) return std::nullopt;
    return op["document_id"].get<std::string>();
  };
  static const json no_data = json::object();
  auto data_of = [&](const json& op) -> const json& {
    auto d = op.find("data");
    return d == op.end() ? no_data : *d;
  };

  // Creates, then updates, then deletes; results stay in request order.
  for (const char* phase : {"create", "update", "delete"}) {
    for (std::size_t i = 0; i < ops.size(); ++i) {
      const json& op = ops[i];
      auto kind = op.find("operation");
      const bool known = kind != op.end() && kind->is_string() &&
                         (*kind == "create" || *kind == "update" || *kind == "delete");
      if (!known) {
        if (phase == std::string_view("create")) result(i, "error", "invalid operation");
        continue;
      }
      if (*kind != phase) continue;
      if (*kind == "create") {
        stored_document d;
        if (!read_fields(data_of(op), d, true)) {
          result(i, "error", "invalid document");
          continue;
        }
        auto id = new_document_id(docs);
        docs[id] = std::move(d);
        results[i] = json{{"client_id", op["client_id"]}, {"status", "success"}, {"document_id", id}, {"version", 1}};
        continue;
      }
      auto id = doc_id_of(op);
      if (!id) {
        result(i, "error", "document_id required");
        continue;
      }
      auto found = docs.find(*id);
      if (found == docs.end()) {
        result(i, "error", "document not found");
        continue;
      }
      if (*kind == "delete") {
        docs.erase(found);
        results[i] = json{{"client_id", op["client_id"]}, {"status", "success"}};
        continue;
      }
      auto version = version_of(data_of(op));
      if (!version) {
        result(i, "error", "version required");
        continue;
      }
      if (*version != found->second.version) {
        result(i, "conflict", "version mismatch");
        continue;
      }
      stored_document updated = found->second;
      if (!read_fields(data_of(op), updated, false)) {
        result(i, "error", "invalid document");
        continue;
      }
      ++updated.version;
      found->second = std::move(updated);
      results[i] = json{{"client_id", op["client_id"]}, {"status", "success"}, {"document_id", *id},
                        {"version", found->second.version}};
    }
  }

  std::size_t successful = 0;
  for (const auto& r : results) successful += r["status"] == "success";
  if (atomic && successful != results.size()) {
    for (auto& r : results)
      if (r["status"] == "success")
        r = json{{"client_id", r["client_id"]}, {"status", "skipped"}, {"error", "batch rolled back"}};
    successful = 0;
  } else {
    live = std::move(docs);
  }
  const auto elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - started);
  return reply(200, json{{"total", results.size()},
                         {"successful", successful},
                         {"failed", results.size() - successful},
                         {"results", json(results)},
                         {"processing_time_ms", elapsed.count()}});
}

// ---- F -------------------------------------------------------------------------------------

std::string write_apis::new_goal_id(const std::string& org) {
  auto& goals = goals_[org];
  std::string id;
  do id = "g-" + std::to_string(next_goal_++);
  while (goals.count(id));
  return id;
}

write_reply write_apis::goal_save(const std::string& org, const std::string* goal_id, std::string_view body) {
  json in = parse(body);
  if (!in.is_object()) return error(422, "invalid goal");
  json* existing = nullptr;
  if (goal_id) {
    auto o = goals_.find(org);
    if (o == goals_.end() || !o->second.count(*goal_id)) return error(404, "not found");
    existing = &o->second.find(*goal_id)->second;
  }
  if (!nonempty_string(in, "period_id")) return error(422, "period_id required");
  const json type = in.contains("type") ? in["type"] : json();
  if (auto why = goal_error(type, in)) return error(422, *why);
  if (existing) {
    *existing = goal_json(*goal_id, in["period_id"], type, in, existing);
    return reply(200, *existing);
  }
  auto id = new_goal_id(org);
  return reply(201, goals_[org][id] = goal_json(id, in["period_id"], type, in));
}

write_reply write_apis::goal_batch(const std::string& org, std::string_view body) {
  json in = parse(body);
  if (!in.is_object()) return error(400, "body must be a JSON object");
  if (!nonempty_string(in, "period_id")) return error(400, "period_id must be a non-empty string");
  auto list = in.find("goals");
  if (list == in.end() || !list->is_array() || list->empty()) return error(400, "goals must be a non-empty array");
  for (const auto& g : *list) {
    if (!g.is_object() || !nonempty_string(g, "id")) return error(400, "every goal needs an id string");
    if (!g.contains("is_new") || !g["is_new"].is_boolean()) return error(400, "every goal needs a boolean is_new");
  }

  const json& period = in["period_id"];
  auto& goals = goals_[org];
  json saved = json::array(), failed = json::array();
  for (const auto& g : *list) {
    const std::string id = g["id"].get<std::string>();
    auto fail = [&](std::string_view why) { failed.push_back(json{{"id", id}, {"error", why}}); };
    const json type = g.contains("type") ? g["type"] : json();
    const json data = g.contains("data") ? g["data"] : json::object();
    if (!data.is_object()) {
      fail("invalid goal");
      continue;
    }
    if (auto why = goal_error(type, data)) {
      fail(*why);
      continue;
    }
    if (g["is_new"].get<bool>()) {
      auto server_id = new_goal_id(org);
      const json& stored = goals[server_id] = goal_json(server_id, period, type, data);
      saved.push_back(json{{"tempId", id}, {"serverId", server_id}, {"data", stored}});
    } else {
      auto it = goals.find(id);
      if (it == goals.end()) {
        fail("not found");
        continue;
      }
      it->second = goal_json(id, period, type, data, &it->second);
      saved.push_back(json{{"id", id}, {"data", it->second}});
    }
  }
  return reply(200, json{{"saved", std::move(saved)}, {"failed", std::move(failed)}});
}

// ---- hooks and state -----------------------------------------------------------------------

void write_apis::reset() {
  std::lock_guard lock(mutex_);
  abilities_.clear();
  single_arrivals_.clear();
  seen_events_.clear();
  progress_limit_left_ = 0;
  progress_retry_after_ = "0";
  rate_limited_ = 0;
  documents_.clear();
  next_document_ = 1;
  goals_.clear();
  next_goal_ = 1;
  applied_ops_.clear();
  processed_events_.clear();
}

void write_apis::set_progress_rate_limit(std::size_t calls, std::string retry_after) {
  std::lock_guard lock(mutex_);
  progress_limit_left_ = calls;
  progress_retry_after_ = std::move(retry_after);
}

void write_apis::seed_document(const std::string& ws, const std::string& doc_id, std::uint64_t version) {
  std::lock_guard lock(mutex_);
  documents_[ws][doc_id] = stored_document{"seeded " + doc_id, "", version};
}

void write_apis::seed_goal(const std::string& org, const std::string& goal_id, const std::string& period_id,
                           const std::string& type, double weight) {
  std::lock_guard lock(mutex_);
  goals_[org][goal_id] = goal_json(goal_id, period_id, type, json{{"title", "seeded " + goal_id}, {"weight", weight}});
}

std::optional<ability_state> write_apis::ability(std::string_view character_id, std::int64_t ability_id) const {
  std::lock_guard lock(mutex_);
  auto it = abilities_.find({std::string(character_id), ability_id});
  if (it == abilities_.end()) return std::nullopt;
  return it->second;
}

bool write_apis::progress_event_seen(std::string_view client_event_id) const {
  std::lock_guard lock(mutex_);
  return seen_events_.find(client_event_id) != seen_events_.end();
}

std::optional<document_state> write_apis::document(std::string_view ws, std::string_view doc_id) const {
  std::lock_guard lock(mutex_);
  auto w = documents_.find(ws);
  if (w == documents_.end()) return std::nullopt;
  auto d = w->second.find(doc_id);
  if (d == w->second.end()) return std::nullopt;
  return document_state{d->second.title, d->second.content, d->second.version};
}

std::optional<std::string> write_apis::goal(std::string_view org, std::string_view goal_id) const {
  std::lock_guard lock(mutex_);
  auto o = goals_.find(org);
  if (o == goals_.end()) return std::nullopt;
  auto g = o->second.find(goal_id);
  if (g == o->second.end()) return std::nullopt;
  return dump(g->second);
}

std::size_t write_apis::rate_limited_count() const {
  std::lock_guard lock(mutex_);
  return rate_limited_;
}

}  // namespace batchgate::mock::detail
