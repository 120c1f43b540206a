#pragma once

// The write reference APIs C (abilities), D (progress events), E (documents) and F (goals) of
// /work/shared/reference-apis.md: single endpoints and batch endpoints over one in-memory store.
// Pure logic, no Beast: mock_upstream.cpp routes requests here. Thread-safe; all state sits
// behind one mutex, so one batch call is one transaction.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/mock_upstream/mock_upstream.hpp"

namespace batchgate::mock::detail {

struct write_reply {
  unsigned status = 200;
  std::string body;  // empty for 204
  std::vector<std::pair<std::string, std::string>> headers;
};

class write_apis {
 public:
  using json = nlohmann::ordered_json;

  explicit write_apis(unsigned single_rate_limit, bool track_applied = false,
                      std::chrono::milliseconds single_rate_window = std::chrono::milliseconds(100))
      : single_rate_limit_(single_rate_limit), single_rate_window_(single_rate_window), track_applied_(track_applied) {}

  /// True for the batch endpoints of C–F (those that `fault` applies to).
  static bool is_batch_path(std::string_view path);
  /// Which C–F endpoint a path (no query) belongs to: "abilities_batch", "abilities_single",
  /// "progress_batch", "progress_single", "documents_batch", "documents_single", "goals_batch",
  /// "goals_single", "users_list" (GET /users?ids=...), "users_single"; "other" for any other path.
  static std::string_view endpoint_name(std::string_view path);

  /// The answer for a C–F endpoint, or nullopt when `path` belongs to none of them.
  /// A non-empty `owner` (the caller's Authorization, with mock_options::tag_owner) is added
  /// as `"owner"` to every ability C returns, so a client can tell whose answer it got.
  std::optional<write_reply> handle(std::string_view method, std::string_view path,
                                    std::string_view body, std::string_view owner = {});

  /// With track_applied: how many times each C operation carrying `data.opId` (a string) was
  /// applied, and each D event was processed (accepted or found duplicate), and the state of
  /// every C ability written so far, as {"ability_ops":{opId:n},"progress_events":{clientEventId:n},
  /// "abilities":{"<character_id>/<ability_id>":{"score":s,"experience_points":x}}}.
  json applied() const;

  void reset();
  void set_progress_rate_limit(std::size_t calls, std::string retry_after);
  void seed_document(const std::string& ws, const std::string& doc_id, std::uint64_t version);
  void seed_goal(const std::string& org, const std::string& goal_id, const std::string& period_id,
                 const std::string& type, double weight);

  std::optional<ability_state> ability(std::string_view character_id, std::int64_t ability_id) const;
  bool progress_event_seen(std::string_view client_event_id) const;
  std::optional<document_state> document(std::string_view ws, std::string_view doc_id) const;
  std::optional<std::string> goal(std::string_view org, std::string_view goal_id) const;
  std::size_t rate_limited_count() const;

 private:
  struct stored_document {
    std::string title;
    std::string content;
    std::uint64_t version = 1;
  };
  using workspace = std::map<std::string, stored_document, std::less<>>;

  // Handlers; each is called with mutex_ held.
  write_reply ability_single(const std::string& cid, std::string_view aid, std::string_view body,
                             std::string_view owner);
  write_reply ability_batch(const std::string& cid, std::string_view body, std::string_view owner);
  write_reply progress_single(std::string_view body);
  write_reply progress_batch(std::string_view body);
  write_reply document_create(const std::string& ws, std::string_view body);
  write_reply document_update(const std::string& ws, const std::string& doc_id, std::string_view body);
  write_reply document_delete(const std::string& ws, const std::string& doc_id);
  write_reply document_batch(std::string_view body);
  write_reply goal_save(const std::string& org, const std::string* goal_id, std::string_view body);
  write_reply goal_batch(const std::string& org, std::string_view body);

  json ability_json(const std::string& cid, std::int64_t aid, std::string_view owner) const;
  void note_op_applied(const json* data);
  void note_event_processed(const std::string& id);
  std::string new_document_id(const workspace& docs);
  std::string new_goal_id(const std::string& org);

  const unsigned single_rate_limit_;
  const std::chrono::milliseconds single_rate_window_;
  const bool track_applied_;
  mutable std::mutex mutex_;
  std::map<std::string, unsigned, std::less<>> applied_ops_;     // C, with track_applied_
  std::map<std::string, unsigned, std::less<>> processed_events_;  // D, with track_applied_

  // C
  std::map<std::pair<std::string, std::int64_t>, ability_state> abilities_;
  std::deque<std::chrono::steady_clock::time_point> single_arrivals_;
  // D
  std::set<std::string, std::less<>> seen_events_;
  std::size_t progress_limit_left_ = 0;
  std::string progress_retry_after_ = "0";
  std::size_t rate_limited_ = 0;
  // E
  std::map<std::string, workspace, std::less<>> documents_;
  std::uint64_t next_document_ = 1;
  // F
  std::map<std::string, std::map<std::string, json, std::less<>>, std::less<>> goals_;
  std::uint64_t next_goal_ = 1;
};

}  // namespace batchgate::mock::detail
