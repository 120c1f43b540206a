// Batch codec: what callers share a batch, which key each one contributes, the exact upstream
// call that is sent, and how the batch answer is split back, for the reference APIs A and B,
// and the write APIs C, D, E and F (items, generated keys, body partitions, result lists).
#include <gtest/gtest.h>

#include <limits>

#include <algorithm>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "coalescer/core/codec.hpp"
#include "config/loader.hpp"

namespace batchgate::coalescer {
namespace {

using nlohmann::json;
using config::batch_encoding;
using config::coalesce_settings;
using config::value_source;

// Owns the strings a caller_request points into.
struct fake_request {
    std::string method = "GET";
    std::string path = "/users/7";
    std::string query;
    routes::param_list path_params{{"id", "7"}};
    std::map<std::string, std::string> headers;  // lower-case names
    std::string body;

    caller_request view() const {
        caller_request r;
        r.method = method;
        r.path = path;
        r.query = query;
        r.path_params = path_params;
        r.header = [this](std::string_view name) -> std::optional<std::string_view> {
            auto it = headers.find(std::string(name));
            if (it == headers.end()) return std::nullopt;
            return std::string_view(it->second);
        };
        r.body = body;
        return r;
    }
};

// A: GET /users/{id} -> GET /users?ids=1,2,7, bare array answer, absent ids are 404.
coalesce_settings users_api() {
    coalesce_settings s;
    s.key = {value_source::path, "id"};
    s.request.method = "GET";
    s.request.path = "/users";
    s.request.encoding = batch_encoding::query_list;
    s.request.query_param = "ids";
    s.request.separator = ",";
    config::result_list list;
    list.items = "";
    list.key = {"/id"};
    list.body = "";
    s.response.lists = {list};
    return s;
}

// B: GET /api/v1/activities/{id}?fields= -> POST /api/v1/batch/get with per-item status.
coalesce_settings activities_api() {
    coalesce_settings s;
    s.key = {value_source::path, "id"};
    s.partition.query = {"fields"};
    s.request.method = "POST";
    s.request.path = "/api/v1/batch/get";
    s.request.encoding = batch_encoding::json_body;
    s.request.body_template =
        json{{"resource_type", "activities"}, {"ids", "{items}"}, {"fields", "{query.fields}"}};
    config::result_list list;
    list.items = "/results";
    list.key = {"/id"};
    list.status_code = "/status_code";
    list.status_field = "/status";
    list.status_map = {{"success", 200}, {"error", 502}};
    list.body = "/data";
    list.error = "/error";
    s.response.lists = {list};
    return s;
}

const char* const b_response = R"({"results":[{"id":"a1","status":"success","data":{"id":"a1","name":"x"}},
              {"id":"a2","status":"error","error":"not found","status_code":404}],
   "total_requested":2,"total_succeeded":1,"total_failed":1,
   "processed_at":"2026-02-16T10:00:00Z"})";

json error_json(const item_outcome& o) { return json::parse(o.body); }

// ---------------------------------------------------------------- extract_key

TEST(ExtractKey, FromPathParam) {
    fake_request r;
    r.path_params = {{"id", "a b"}};
    auto k = extract_key(users_api(), r.view());
    ASSERT_TRUE(k.key) << k.error;
    EXPECT_EQ(*k.key, "a b");

    r.path_params.clear();
    k = extract_key(users_api(), r.view());
    EXPECT_FALSE(k.key);
    EXPECT_EQ(k.error, "path parameter \"id\" is missing");
}

// GET /users?ids=5%2C6,7 reads upstream as 5,6,7: a key holding the separator would shift
// every answer matched by position, so that caller alone gets a 400.
TEST(ExtractKey, QueryListKeyHoldingTheSeparatorIsRefused) {
    fake_request r;
    r.path_params = {{"id", "5,6"}};
    auto k = extract_key(users_api(), r.view());
    EXPECT_FALSE(k.key);
    EXPECT_EQ(k.error, "item key \"5,6\" contains the batch list separator \",\"");
    r.path_params = {{"id", "7"}};
    EXPECT_TRUE(extract_key(users_api(), r.view()).key);
    auto repeat = users_api();
    repeat.request.encoding = batch_encoding::query_repeat;  // id=5%2C6&id=7 is unambiguous
    r.path_params = {{"id", "5,6"}};
    EXPECT_TRUE(extract_key(repeat, r.view()).key);
}

TEST(ExtractKey, FromQueryFirstOccurrenceDecoded) {
    auto s = users_api();
    s.request.encoding = batch_encoding::query_repeat;
    s.key = {value_source::query, "id"};
    fake_request r;
    r.query = "x=1&id=a%2Cb+c&id=second";
    auto k = extract_key(s, r.view());
    ASSERT_TRUE(k.key) << k.error;
    EXPECT_EQ(*k.key, "a,b c");

    r.query = "ids=1";
    k = extract_key(s, r.view());
    EXPECT_FALSE(k.key);
    EXPECT_EQ(k.error, "query parameter \"id\" is missing");

    r.query = "id=";
    k = extract_key(s, r.view());
    EXPECT_FALSE(k.key);
    EXPECT_EQ(k.error, "query parameter \"id\" is empty");
}

TEST(ExtractKey, FromHeader) {
    auto s = users_api();
    s.key = {value_source::header, "x-item-id"};
    fake_request r;
    r.headers["x-item-id"] = "42";
    auto k = extract_key(s, r.view());
    ASSERT_TRUE(k.key) << k.error;
    EXPECT_EQ(*k.key, "42");

    r.headers.clear();
    k = extract_key(s, r.view());
    EXPECT_FALSE(k.key);
    EXPECT_EQ(k.error, "header \"x-item-id\" is missing");
}

TEST(ExtractKey, FromBodyStringOrInteger) {
    auto s = users_api();
    s.key = {value_source::body, "/clientEventId"};
    fake_request r;
    r.body = R"({"type":"lesson_progress","clientEventId":"e-1","percent":42})";
    auto k = extract_key(s, r.view());
    ASSERT_TRUE(k.key) << k.error;
    EXPECT_EQ(*k.key, "e-1");

    r.body = R"({"clientEventId":1730956800000})";
    k = extract_key(s, r.view());
    ASSERT_TRUE(k.key) << k.error;
    EXPECT_EQ(*k.key, "1730956800000");

    r.body = R"({"clientEventId":-3})";
    EXPECT_EQ(extract_key(s, r.view()).key, "-3");

    s.key.name = "/operations/0/abilityId";
    r.body = R"({"operations":[{"abilityId":4}]})";
    EXPECT_EQ(extract_key(s, r.view()).key, "4");
}

TEST(ExtractKey, BodyErrorsSayWhatIsWrong) {
    auto s = users_api();
    s.key = {value_source::body, "/clientEventId"};
    fake_request r;

    r.body = R"({"clientEventId": "e-1")";  // truncated
    auto k = extract_key(s, r.view());
    EXPECT_FALSE(k.key);
    EXPECT_EQ(k.error, "request body is not valid JSON");

    r.body = "";
    EXPECT_EQ(extract_key(s, r.view()).error, "request body is not valid JSON");

    r.body = R"({"type":"lesson_progress"})";
    k = extract_key(s, r.view());
    EXPECT_FALSE(k.key);
    EXPECT_EQ(k.error, "item key /clientEventId is missing from the request body");

    for (const char* body : {R"({"clientEventId":1.5})", R"({"clientEventId":true})",
                             R"({"clientEventId":null})", R"({"clientEventId":{"a":1}})",
                             R"({"clientEventId":["e-1"]})"}) {
        r.body = body;
        k = extract_key(s, r.view());
        EXPECT_FALSE(k.key) << body;
        EXPECT_NE(k.error.find("must be a string or an integer"), std::string::npos) << k.error;
    }
}

// An integer key is its digits as written, as answer entries are keyed (answer_key): past 64
// bits it is still an integer, and -0 is not 0.
TEST(ExtractKey, BodyIntegerKeysAreTheirDigitsAsWritten) {
    auto s = users_api();
    s.key = {value_source::body, "/clientEventId"};
    fake_request r;
    for (auto [body, key] : {std::pair{R"({"clientEventId": 123456789012345678901234567890})", "123456789012345678901234567890"},
                             std::pair{R"({"clientEventId":-0})", "-0"}, std::pair{R"({"clientEventId":0})", "0"},
                             std::pair{R"({"clientEventId": 42 })", "42"}, std::pair{R"({"clientEventId":"-0"})", "-0"}}) {
        r.body = body;
        auto k = extract_key(s, r.view());
        EXPECT_EQ(k.key, std::optional<std::string>(key)) << body << ": " << k.error;
    }
    r.body = R"({"clientEventId":1E400})";
    EXPECT_FALSE(extract_key(s, r.view()).key);
    r.body = R"({"clientEventId":1e3})";
    EXPECT_FALSE(extract_key(s, r.view()).key) << "1e3 is a number, not an integer's digits";
}

// ---------------------------------------------------------------- make_partition

TEST(Partition, DifferentAuthorizationNeverShareABatch) {
    auto s = users_api();
    fake_request alice, bob;
    alice.headers["authorization"] = "Bearer alice";
    bob.headers["authorization"] = "Bearer bob";
    auto pa = make_partition("users", s, alice.view());
    auto pb = make_partition("users", s, bob.view());
    EXPECT_NE(pa.key, pb.key);
    EXPECT_EQ(pa.values.headers.at("authorization"), "Bearer alice");

    fake_request alice2 = alice;
    alice2.path_params = {{"id", "8"}};  // the item key is not part of the partition
    EXPECT_EQ(make_partition("users", s, alice2.view()).key, pa.key);
}

TEST(Partition, CookieIsACredentialToo) {
    auto s = users_api();
    fake_request a, b;
    a.headers["cookie"] = "sid=1";
    b.headers["cookie"] = "sid=2";
    EXPECT_NE(make_partition("users", s, a.view()).key, make_partition("users", s, b.view()).key);
    EXPECT_EQ(make_partition("users", s, a.view()).values.headers.at("cookie"), "sid=1");
}

TEST(Partition, CredentialsOffSharesAcrossUsersAndForwardsNone) {
    auto s = users_api();
    s.partition.credentials = false;
    fake_request alice, bob;
    alice.headers["authorization"] = "Bearer alice";
    bob.headers["authorization"] = "Bearer bob";
    auto pa = make_partition("users", s, alice.view());
    EXPECT_EQ(pa.key, make_partition("users", s, bob.view()).key);
    EXPECT_TRUE(pa.values.headers.empty());
}

TEST(Partition, RouteNameSeparatesPartitions) {
    fake_request r;
    EXPECT_NE(make_partition("users", users_api(), r.view()).key,
              make_partition("users2", users_api(), r.view()).key);
}

TEST(Partition, AbsentAndEmptyDiffer) {
    auto s = users_api();
    s.partition.headers = {"x-tenant"};
    s.partition.query = {"fields"};
    fake_request absent, empty;
    empty.headers["x-tenant"] = "";
    auto pa = make_partition("users", s, absent.view());
    auto pe = make_partition("users", s, empty.view());
    EXPECT_NE(pa.key, pe.key);
    EXPECT_FALSE(pa.values.headers.contains("x-tenant"));
    EXPECT_EQ(pe.values.headers.at("x-tenant"), "");

    fake_request qempty = absent;
    qempty.query = "fields=";
    auto pq = make_partition("users", s, qempty.view());
    EXPECT_NE(pa.key, pq.key);
    EXPECT_FALSE(pa.values.query.contains("fields"));
    EXPECT_EQ(pq.values.query.at("fields"), "");
}

TEST(Partition, SameValuesSameKeyAndQueryUsesFirstOccurrence) {
    auto s = activities_api();
    fake_request a, b, c;
    a.query = "fields=id,name";
    b.query = "fields=id%2Cname&fields=other";
    c.query = "fields=id";
    auto pa = make_partition("activities", s, a.view());
    EXPECT_EQ(pa.key, make_partition("activities", s, b.view()).key);
    EXPECT_NE(pa.key, make_partition("activities", s, c.view()).key);
    EXPECT_EQ(pa.values.query.at("fields"), "id,name");
}

TEST(Partition, PathParamsAreIncluded) {
    auto s = users_api();
    s.partition.path = {"character_id"};
    fake_request a, b;
    a.path_params = {{"character_id", "3"}, {"id", "4"}};
    b.path_params = {{"character_id", "5"}, {"id", "4"}};
    auto pa = make_partition("abilities", s, a.view());
    EXPECT_NE(pa.key, make_partition("abilities", s, b.view()).key);
    EXPECT_EQ(pa.values.path.at("character_id"), "3");
}

TEST(Partition, ValuesContainingSeparatorsCannotCollide) {
    auto s = users_api();
    s.partition.headers = {"x-a", "x-b"};
    s.partition.credentials = false;
    // Every pair moves text across the boundary between two values in a different way.
    const std::vector<std::pair<std::string, std::string>> pairs = {
        {"1", "23"},     {"12", "3"},       {"1:", "+3"},       {"", "1:x"},   {"1:x", ""},
        {"3:x-b+1", ""}, {"", "3:x-b+1:1"}, {"h3:x-b-", ""},    {"-", "+"},    {"+", "-"},
        {std::string("a\0b", 3), "c"}, {"a", std::string("\0bc", 3)},     {"2:ab", "1:c"},    {"h", "h"},    {"1:h", "h"}};
    std::map<std::string, std::pair<std::string, std::string>> seen;
    for (auto [x, y] : pairs) {
        fake_request r;
        r.headers["x-a"] = x;
        r.headers["x-b"] = y;
        auto key = make_partition("r", s, r.view()).key;
        auto [it, inserted] = seen.emplace(key, std::pair{x, y});
        EXPECT_TRUE(inserted) << "collision: (" << x << "," << y << ") vs (" << it->second.first << ","
                              << it->second.second << ")";
    }
    // Only one of the two headers present, with the other's encoding inside it.
    fake_request only_a, forged;
    only_a.headers["x-a"] = "v";
    forged.headers["x-a"] = "v";
    forged.headers["x-b"] = "";
    EXPECT_NE(make_partition("r", s, only_a.view()).key, make_partition("r", s, forged.view()).key);

    // A route name cannot impersonate route + values.
    fake_request plain;
    auto base = make_partition("r", s, plain.view()).key;
    EXPECT_NE(make_partition(base, s, plain.view()).key, base);
}

TEST(Partition, InjectingTheEncodingsOwnSeparatorCannotCollide) {
    auto s = users_api();
    s.partition.headers = {"x-a", "x-b"};
    s.partition.credentials = false;
    auto key_of = [&](const std::string& a, const std::string& b) {
        fake_request r;
        r.headers["x-a"] = a;
        r.headers["x-b"] = b;
        return make_partition("r", s, r.view()).key;
    };
    // Whatever the encoding puts between two values, a value that contains it must not be
    // mistaken for the boundary: moving it across must change the key.
    auto k = key_of("AAAA", "BBBB");
    auto a_end = k.find("AAAA") + 4, b_begin = k.find("BBBB");
    ASSERT_LT(a_end, b_begin);
    const std::string between = k.substr(a_end, b_begin - a_end);
    EXPECT_NE(key_of("1" + between + "2", "3"), key_of("1", "2" + between + "3"));
    EXPECT_NE(key_of("AAAA" + between + "BBBB", ""), key_of("AAAA", "BBBB" + between));
    EXPECT_NE(key_of("", between), key_of(between, ""));
}

// ---------------------------------------------------------------- item_cost

TEST(ItemCost, MatchesBytesAddedToTheBatchCall) {
    auto s = users_api();
    EXPECT_EQ(item_cost(s, "7"), 2u);         // "7,"
    EXPECT_EQ(item_cost(s, "a,b"), 6u);       // "a%2Cb,"
    s.request.encoding = batch_encoding::query_repeat;
    s.request.query_param = "id";
    EXPECT_EQ(item_cost(s, "7"), 5u);         // "&id=7"
    EXPECT_EQ(item_cost(s, "a b"), 9u);       // "&id=a%20b"
    s.request.encoding = batch_encoding::json_body;
    EXPECT_EQ(item_cost(s, "a1"), 5u);        // "\"a1\","
    EXPECT_EQ(item_cost(s, "q\"x"), 7u);      // "\"q\\\"x\","
}

// ---------------------------------------------------------------- build_batch_request: A

TEST(BuildA, QueryListExactTarget) {
    auto s = users_api();
    partition_values v;
    v.headers["authorization"] = "Bearer t";
    auto out = build_batch_request(s, v, {"1", "2", "7"}, {});
    EXPECT_EQ(out.method, "GET");
    EXPECT_EQ(out.target, "/users?ids=1,2,7");
    EXPECT_TRUE(out.body.empty());
    EXPECT_EQ(out.headers, (std::vector<std::pair<std::string, std::string>>{{"authorization", "Bearer t"}}));
}

TEST(BuildA, QueryRepeatExactTarget) {
    auto s = users_api();
    s.request.encoding = batch_encoding::query_repeat;
    s.request.query_param = "id";
    auto out = build_batch_request(s, {}, {"1", "2", "7"}, {});
    EXPECT_EQ(out.target, "/users?id=1&id=2&id=7");
    EXPECT_TRUE(out.headers.empty());
}

TEST(BuildA, KeysAreUrlEncodedAndSeparatorIsLiteral) {
    auto s = users_api();
    s.request.separator = "|";
    auto out = build_batch_request(s, {}, {"a,b", "c d", "e|f"}, {});
    EXPECT_EQ(out.target, "/users?ids=a%2Cb|c%20d|e%7Cf");
}

TEST(BuildA, AppendsToAnExistingQuery) {
    auto s = users_api();
    s.request.path = "/users?view=full";
    EXPECT_EQ(build_batch_request(s, {}, {"1", "2"}, {}).target, "/users?view=full&ids=1,2");
    s.request.encoding = batch_encoding::query_repeat;
    s.request.query_param = "id";
    EXPECT_EQ(build_batch_request(s, {}, {"1", "2"}, {}).target, "/users?view=full&id=1&id=2");
}

TEST(BuildA, PathPlaceholdersComeFromThePartitionUrlEncoded) {
    auto s = users_api();
    s.request.path = "/api/characters/{path.character_id}/abilities?fields={query.fields}&t={header.x-t}";
    partition_values v;
    v.path["character_id"] = "3/4";
    v.query["fields"] = "id,name";
    auto out = build_batch_request(s, v, {"9"}, {});
    EXPECT_EQ(out.target, "/api/characters/3%2F4/abilities?fields=id%2Cname&t=&ids=9");
}

TEST(BuildA, ForwardsPartitionAndForwardHeadersOnly) {
    auto s = users_api();
    s.partition.headers = {"x-tenant"};
    s.request.forward_headers = {"x-request-id", "accept-language"};
    partition_values v;
    v.headers = {{"x-tenant", "t1"}, {"authorization", "Bearer a"}, {"cookie", "sid=1"},
                 {"x-request-id", "r-1"}, {"x-unrelated", "no"}};
    auto out = build_batch_request(s, v, {"1"}, {});
    EXPECT_EQ(out.headers, (std::vector<std::pair<std::string, std::string>>{
                               {"x-tenant", "t1"},
                               {"authorization", "Bearer a"},
                               {"cookie", "sid=1"},
                               {"x-request-id", "r-1"}}));
}

// ---------------------------------------------------------------- build_batch_request: B

TEST(BuildB, ExactJsonBodyWithFields) {
    auto s = activities_api();
    fake_request caller;
    caller.path = "/api/v1/activities/a1";
    caller.path_params = {{"id", "a1"}};
    caller.query = "fields=id,name";
    caller.headers["authorization"] = "Bearer t";
    auto p = make_partition("activities", s, caller.view());

    auto out = build_batch_request(s, p.values, {"a1", "a2"}, {});
    EXPECT_EQ(out.method, "POST");
    EXPECT_EQ(out.target, "/api/v1/batch/get");
    EXPECT_EQ(json::parse(out.body),
              json::parse(R"({"resource_type":"activities","ids":["a1","a2"],"fields":"id,name"})"));
    EXPECT_EQ(out.headers, (std::vector<std::pair<std::string, std::string>>{
                               {"authorization", "Bearer t"}, {"content-type", "application/json"}}));
}

TEST(BuildB, WithoutFieldsTheKeyVanishes) {
    auto s = activities_api();
    fake_request caller;
    caller.path_params = {{"id", "a1"}};
    auto p = make_partition("activities", s, caller.view());
    auto out = build_batch_request(s, p.values, {"a1", "a2"}, {});
    auto body = json::parse(out.body);
    EXPECT_EQ(body, json::parse(R"({"resource_type":"activities","ids":["a1","a2"]})"));
    EXPECT_FALSE(body.contains("fields"));

    // Sent but empty is not absent: the upstream sees what the caller sent.
    caller.query = "fields=";
    p = make_partition("activities", s, caller.view());
    EXPECT_EQ(json::parse(build_batch_request(s, p.values, {"a1"}, {}).body).at("fields"), "");
}

TEST(BuildJsonBody, NestedArraysInterpolationAndKeysAsStrings) {
    auto s = activities_api();
    s.request.path = "/api/characters/{path.cid}/abilities/batch";
    s.request.body_template = json::parse(R"({
        "batch": {"ids": "{items}", "tags": ["{header.x-tag}", "fixed", "{query.missing}"]},
        "label": "char-{path.cid}/{query.missing}/end",
        "literal": "{not a placeholder}",
        "n": 5
    })");
    partition_values v;
    v.path["cid"] = "3";
    v.headers["x-tag"] = "blue";
    auto out = build_batch_request(s, v, {"4", "7"}, {});
    EXPECT_EQ(out.target, "/api/characters/3/abilities/batch");
    EXPECT_EQ(json::parse(out.body), json::parse(R"({
        "batch": {"ids": ["4", "7"], "tags": ["blue", "fixed"]},
        "label": "char-3//end",
        "literal": "{not a placeholder}",
        "n": 5
    })"));
    // The template itself is untouched for the next batch.
    EXPECT_EQ(s.request.body_template["batch"]["ids"], "{items}");
}

TEST(BuildJsonBody, InvalidUtf8InValuesDoesNotThrow) {
    auto s = activities_api();
    partition_values v;
    v.query["fields"] = "bad\xff";
    outgoing_request out;
    ASSERT_NO_THROW(out = build_batch_request(s, v, {"a\xfe"}, {}));
    EXPECT_TRUE(json::accept(out.body));
}

// ---------------------------------------------------------------- split: A

TEST(SplitA, UnorderedRootArrayAndAbsentIdsGet404) {
    auto s = users_api();
    auto out = split_batch_response(
        s, "users", R"([{"id":"7","name":"Seven"},{"id":"1","name":"One"},{"id":99,"name":"x"}])",
        {"1", "2", "7"});
    ASSERT_TRUE(out.error.empty()) << out.error;
    ASSERT_EQ(out.items.size(), 3u);
    EXPECT_EQ(out.at("1").status, 200);
    EXPECT_EQ(json::parse(out.at("1").body), json::parse(R"({"id":"1","name":"One"})"));
    EXPECT_EQ(out.at("7").status, 200);
    EXPECT_EQ(json::parse(out.at("7").body)["name"], "Seven");

    EXPECT_EQ(out.at("2").status, 404);
    EXPECT_EQ(error_json(out.at("2")),
              json::parse(R"({"error":"not_found","route":"users",
                  "message":"no item with key \"2\" in the upstream batch answer"})"));
    EXPECT_EQ(out.ignored_items, 1u);  // id 99 was not asked for
}

TEST(SplitA, DeeplyNestedAnswerIsUnusableNotACrash) {
    auto s = users_api();
    const std::string deep = "[" + std::string(100000, '[') + std::string(100000, ']') + "]";
    auto out = split_batch_response(s, "users", deep, {"1"}, 64);
    EXPECT_EQ(out.error, "upstream batch answer is JSON nested deeper than limits.max_json_depth (64)");
    EXPECT_TRUE(out.items.empty());
    // The same bound applies to items: one deep item makes the whole answer unusable.
    auto item = split_batch_response(s, "users", R"([{"id":"1","x":[[[[1]]]]}])", {"1"}, 4);
    EXPECT_FALSE(item.error.empty());
    EXPECT_EQ(split_batch_response(s, "users", R"([{"id":"1","x":[[1]]}])", {"1"}, 4).at("1").status, 200);
}

TEST(BuildItem, DeepBodyOrJsonValueNeverBuildsAnItem) {
    auto s = users_api();
    s.request.item = nlohmann::json::parse(R"({"id":"{key}","data":"{body}","extra":"{header.x-extra:json}"})");
    const std::string deep = std::string(60000, '[') + std::string(60000, ']');
    const std::string deep_body = R"({"a":)" + deep + "}";
    caller_request r;
    r.method = "POST";
    r.body = deep_body;
    r.header = [](std::string_view) -> std::optional<std::string_view> { return std::nullopt; };
    EXPECT_FALSE(build_item(s, r, "1").item);
    std::string header_text = deep;
    r.body = "{}";
    r.header = [&](std::string_view name) -> std::optional<std::string_view> {
        if (name == "x-extra") return std::string_view(header_text);
        return std::nullopt;
    };
    auto b = build_item(s, r, "1");
    EXPECT_FALSE(b.item);
    EXPECT_NE(b.error.find("max_json_depth"), std::string::npos) << b.error;
}

TEST(SplitA, IntegerKeysMatchTheirText) {
    auto s = users_api();
    auto out = split_batch_response(s, "users", R"([{"id":7,"name":"Seven"}])", {"7"});
    EXPECT_EQ(out.at("7").status, 200);
    EXPECT_EQ(json::parse(out.at("7").body)["name"], "Seven");
}

// The key is the integer as written: the parse's -0 is 0, and past 64 bits it is a double.
TEST(SplitA, IntegerKeysAreTheirDigitsAsWritten) {
    auto s = users_api();
    auto out = split_batch_response(
        s, "users",
        R"([{"id":-0,"r":"minus"},{"id":0,"r":"zero"},{"id":18446744073709551616,"r":"big"},{"id":1E2},{"id":100.0}])",
        {"0", "-0", "18446744073709551616", "100"});
    ASSERT_TRUE(out.error.empty()) << out.error;
    EXPECT_EQ(out.at("-0").body, R"({"id":-0,"r":"minus"})");
    EXPECT_EQ(out.at("0").body, R"({"id":0,"r":"zero"})");
    EXPECT_EQ(out.at("18446744073709551616").body, R"({"id":18446744073709551616,"r":"big"})");
    EXPECT_EQ(out.at("100").status, 404) << "1E2 and 100.0 are not integers as written";
    EXPECT_EQ(out.ignored_items, 2u);
}

TEST(SplitA, MissingStatusIsConfigurable) {
    auto s = users_api();
    s.response.missing_status = 410;
    auto out = split_batch_response(s, "users", "[]", {"1"});
    EXPECT_EQ(out.at("1").status, 410);
    EXPECT_EQ(error_json(out.at("1"))["error"], "not_found");
}

TEST(SplitA, ItemsWithWrongKeyTypeAreIgnored) {
    auto s = users_api();
    auto out = split_batch_response(
        s, "users", R"([{"id":1.5},{"id":true},{"id":null},{"name":"no id"},"7",{"id":{"v":"7"}},{"id":"7"}])",
        {"7"});
    ASSERT_TRUE(out.error.empty());
    EXPECT_EQ(out.ignored_items, 6u);
    EXPECT_EQ(out.at("7").status, 200);
    EXPECT_EQ(out.at("7").body, R"({"id":"7"})");
}

// An answer in the order asked is read position by position (no look-up); one that leaves that
// order at any point, or names a key not asked for, is read by key from there. Each caller's
// answer is the same either way.
TEST(SplitA, AnswersInTheOrderAskedAndInAnyOtherSplitAlike) {
    auto s = users_api();
    const std::vector<std::string> keys{"1", "2", "3", "4"};
    auto entry = [](const std::string& id) { return R"({"id":")" + id + R"(","name":"n)" + id + R"("})"; };
    auto answer = [&](std::vector<std::string> ids) {
        std::string a = "[";
        for (const auto& id : ids) a += (a.size() > 1 ? "," : "") + entry(id);
        return a + "]";
    };
    for (const auto& ids : std::vector<std::vector<std::string>>{
             {"1", "2", "3", "4"}, {"2", "1", "3", "4"}, {"1", "2", "4", "3"}, {"4", "3", "2", "1"}}) {
        auto out = split_batch_response(s, "users", answer(ids), keys);
        ASSERT_TRUE(out.error.empty()) << out.error;
        ASSERT_EQ(out.items.size(), 4u);
        for (std::size_t i = 0; i < keys.size(); ++i) {
            EXPECT_EQ(out.items[i].status, 200) << ids[0] << ids[1] << ids[2] << ids[3];
            EXPECT_EQ(out.items[i].body, entry(keys[i]));
        }
        EXPECT_EQ(out.ignored_items, 0u);
    }
    // As many entries as keys, in order until one not asked for: the rest by key, the key not
    // answered a 404, the stranger ignored.
    for (const auto& ids : std::vector<std::vector<std::string>>{{"1", "2", "9", "4"}, {"1", "2", "4", "9"}}) {
        auto out = split_batch_response(s, "users", answer(ids), keys);
        ASSERT_TRUE(out.error.empty()) << out.error;
        EXPECT_EQ(out.at("1").body, entry("1"));
        EXPECT_EQ(out.at("2").body, entry("2"));
        EXPECT_EQ(out.at("4").body, entry("4"));
        EXPECT_EQ(out.at("3").status, 404);
        EXPECT_EQ(out.ignored_items, 1u);
    }
    // In order but for a key answered twice where it was asked once: ambiguous, as in any order.
    auto twice = split_batch_response(s, "users", R"([{"id":"1","name":"a"},{"id":"1","name":"b"}])", {"1", "2"});
    ASSERT_TRUE(twice.error.empty()) << twice.error;
    EXPECT_EQ(twice.at("1").status, 502);
    EXPECT_EQ(twice.at("2").status, 404);
}

TEST(SplitA, DuplicateKeysDifferentContentIs502IdenticalIsFine) {
    auto s = users_api();
    auto out = split_batch_response(
        s, "users",
        R"([{"id":"7","name":"a"},{"id":"1","name":"one"},{"id":"7","name":"b"},{"id":"1","name":"one"}])",
        {"1", "7"});
    ASSERT_TRUE(out.error.empty());
    EXPECT_EQ(out.at("7").status, 502);
    auto e = error_json(out.at("7"));
    EXPECT_EQ(e["message"], "upstream returned key \"7\" more than once");
    EXPECT_EQ(e["route"], "users");
    EXPECT_EQ(out.at("1").status, 200);
    EXPECT_EQ(json::parse(out.at("1").body)["name"], "one");
}

// A caller's item is the upstream's own bytes: the parse decides who gets what, but numbers keep
// their digits (an integer past 64 bits is no double), members their order, strings their escapes.
TEST(SplitA, ItemsAreHandedOnAsTheUpstreamWroteThem) {
    auto s = users_api();
    auto out = split_batch_response(
        s, "users",
        "[ {\"name\": \"b\\u00e9\", \"id\": \"7\", \"balance\": 12345678901234567890123.10},\n"
        "  {\"id\":\"1\",\"n\":1E2} ]",
        {"1", "7"});
    ASSERT_TRUE(out.error.empty());
    EXPECT_EQ(out.at("7").status, 200);
    EXPECT_EQ(out.at("7").body, R"({"name": "b\u00e9", "id": "7", "balance": 12345678901234567890123.10})");
    EXPECT_EQ(out.at("1").body, R"({"id":"1","n":1E2})");
}

// Two entries for one key are one answer only when they are the same bytes: equal as parsed
// (1.10 and 1.1, two integers past 64 bits that round alike) is not enough where the bytes go on.
TEST(SplitA, DuplicateKeysEqualOnlyAsParsedAre502) {
    auto s = users_api();
    for (const char* body : {R"([{"id":"7","v":1.10},{"id":"7","v":1.1}])",
                             R"([{"id":"7","b":12345678901234567890123},{"id":"7","b":12345678901234567890124}])"}) {
        auto out = split_batch_response(s, "users", body, {"7"});
        ASSERT_TRUE(out.error.empty());
        EXPECT_EQ(out.at("7").status, 502) << body;
    }
}

// A name repeated in an item: the parse reads its last copy, a client's parser might read the
// first. Where that is the key's member and the copies name two keys, the item is neither
// key's answer (a 502 for each, whichever reader is right); elsewhere the caller gets the item
// as parsed, not its bytes.
TEST(SplitA, AnItemWithARepeatedNameIsAnsweredAsParsed) {
    auto s = users_api();
    auto out = split_batch_response(s, "users", R"([{"id":"7","v":{"x":1,"x":2}}, {"id":"1"}])", {"1", "7"});
    ASSERT_TRUE(out.error.empty());
    EXPECT_EQ(out.at("1").status, 200);
    EXPECT_EQ(out.at("7").status, 200);
    EXPECT_EQ(out.at("7").body, R"({"id":"7","v":{"x":2}})");
    // The key's member repeated with one value: one key, answered as parsed.
    auto same = split_batch_response(s, "users", R"([{"id":"7","id":"7","v":1}])", {"7"});
    ASSERT_TRUE(same.error.empty());
    EXPECT_EQ(same.at("7").status, 200);
    EXPECT_EQ(same.at("7").body, R"({"id":"7","v":1})");
}

TEST(SplitA, AnItemWhoseKeyMemberNamesTwoKeysAnswersNeither) {
    auto s = users_api();
    // In the order asked, out of it, written with an escape, one of the two keys not asked for,
    // and beside a proper item for the same key: each key the item names gets a 502.
    for (const char* body : {R"([{"id":"1","id":"7"},{"id":"7"}])", R"([{"id":"7"},{"id":"1","id":"7"}])",
                             R"([{"id":"1","\u0069d":"7"},{"id":"7"}])", R"([{"id":"7","id":"1"}])",
                             R"([{"id":"7","id":"1"},{"id":"7"}])",  // the last copy in the order asked
                             R"([{"id":"1","id":"7","id":"1"}])",       // first and last alike, one between
                             R"([{"id":"7","id":"1","id":"7","id":"7"}])", R"([{"id":"8","id":"1","id":"7"}])"}) {
        auto out = split_batch_response(s, "users", body, {"1", "7"});
        ASSERT_TRUE(out.error.empty()) << body;
        EXPECT_EQ(out.at("1").status, 502) << body;
        EXPECT_EQ(out.at("7").status, 502) << body;
        EXPECT_NE(out.at("7").body.find("names two keys"), std::string::npos) << out.at("7").body;
    }
    auto one = split_batch_response(s, "users", R"([{"id":"1","id":"99"},{"id":"7"}])", {"1", "7"});
    ASSERT_TRUE(one.error.empty());
    EXPECT_EQ(one.at("1").status, 502);
    EXPECT_EQ(one.at("7").status, 200);
    // One copy names no key: the other's key is still named by one reading only.
    auto no_key = split_batch_response(s, "users", R"([{"id":null,"id":"1"},{"id":"7"}])", {"1", "7"});
    ASSERT_TRUE(no_key.error.empty());
    EXPECT_EQ(no_key.at("1").status, 502);
    EXPECT_EQ(no_key.at("7").status, 200);
    // Nested: a repeated member on the way to the key.
    auto nested_route = s;
    nested_route.response.lists[0].key = {"/data/id"};
    auto nested = split_batch_response(nested_route, "users",
                                       R"([{"data":{"id":"1"},"data":{"id":"7"},"data":{"id":"1"}}])", {"1", "7"});
    ASSERT_TRUE(nested.error.empty());
    EXPECT_EQ(nested.at("1").status, 502);
    EXPECT_EQ(nested.at("7").status, 502);
    // Several key pointers: where every copy of the first agrees, the later ones are not read.
    auto alt = nested_route;
    alt.response.lists[0].key = {"/tempId", "/id"};
    auto first_wins = split_batch_response(alt, "users", R"([{"tempId":"1","tempId":"1","id":"7","id":"8"}])",
                                           {"1", "7", "8"});
    ASSERT_TRUE(first_wins.error.empty());
    EXPECT_EQ(first_wins.at("1").status, 200);
    EXPECT_EQ(first_wins.at("7").status, 404);
    // A copy without the first pointer: its reader goes on to the next one.
    auto d_alt = nested_route;
    d_alt.response.lists[0].key = {"/d/t", "/id"};
    auto falls_through = split_batch_response(d_alt, "users", R"([{"d":{"t":"1"},"d":{},"id":"7"}])", {"1", "7"});
    ASSERT_TRUE(falls_through.error.empty());
    EXPECT_EQ(falls_through.at("1").status, 502);
    EXPECT_EQ(falls_through.at("7").status, 502);
    // A copy on the way that reaches no key, first or between: the others' key is not sure.
    for (const char* body : {R"([{"data":{"x":1},"data":{"id":"1"}},{"data":{"id":"7"}}])",
                             R"([{"data":{"id":"1"},"data":null,"data":{"id":"1"}},{"data":{"id":"7"}}])",
                             R"([{"data":{"id":"1"},"data":{"x":1}},{"data":{"id":"7"}}])"}) {
        auto out = split_batch_response(nested_route, "users", body, {"1", "7"});
        ASSERT_TRUE(out.error.empty()) << body;
        EXPECT_EQ(out.at("1").status, 502) << body;
        EXPECT_EQ(out.at("7").status, 200) << body;
    }
    // However many copies: every key any of them names (here the 81st), and none where all agree.
    std::string many = R"([{)";
    for (int i = 0; i < 80; ++i) many += R"("id":"1",)";
    auto copies = split_batch_response(s, "users", many + R"("id":"7","id":"1"}])", {"1", "7"});
    ASSERT_TRUE(copies.error.empty());
    EXPECT_EQ(copies.at("1").status, 502);
    EXPECT_EQ(copies.at("7").status, 502);
    auto agreeing = split_batch_response(s, "users", many + R"("id":"1"}])", {"1"});
    ASSERT_TRUE(agreeing.error.empty());
    EXPECT_EQ(agreeing.at("1").status, 200);
    // Two copies that read as one key (a string and an integer): one key, no ambiguity.
    auto alike = split_batch_response(s, "users", R"([{"id":"1","id":1}])", {"1"});
    ASSERT_TRUE(alike.error.empty());
    EXPECT_EQ(alike.at("1").status, 200);
    // A key neither copy is requested under: a stranger, ignored.
    auto stranger = split_batch_response(s, "users", R"([{"id":"8","id":"9"},{"id":"7"}])", {"7"});
    ASSERT_TRUE(stranger.error.empty());
    EXPECT_EQ(stranger.at("7").status, 200);
    EXPECT_EQ(stranger.ignored_items, 1u);
}

TEST(SplitB, TheBodyPointersValueIsHandedOnAsWritten) {
    auto s = activities_api();
    s.response.lists[0].error.clear();  // a failed item's own `data` is its caller's answer
    auto out = split_batch_response(
        s, "activities",
        R"({"results":[{"id":"a1","status_code":200,"data":{ "z":1, "a":[1.50] }},)"
        R"({"id":"a2","status_code":404,"data":{"why" : "gone"}}, {"id":"a3","status_code":409}]})",
        {"a1", "a2", "a3"});
    ASSERT_TRUE(out.error.empty()) << out.error;
    EXPECT_EQ(out.at("a1").status, 200);
    EXPECT_EQ(out.at("a1").body, R"({ "z":1, "a":[1.50] })");
    EXPECT_EQ(out.at("a2").status, 404);
    EXPECT_EQ(out.at("a2").body, R"({"why" : "gone"})");
    EXPECT_EQ(out.at("a3").status, 409);
    EXPECT_EQ(out.at("a3").body, R"({"id":"a3","status_code":409})");  // no data: the whole item
}

TEST(SplitA, MalformedJsonFailsTheWholeBatch) {
    auto s = users_api();
    for (const char* body : {"[{\"id\":\"1\"", "<html>502 Bad Gateway</html>", "[1,]"}) {
        auto out = split_batch_response(s, "users", body, {"1"});
        EXPECT_EQ(out.error, "upstream batch answer is not valid JSON") << body;
        EXPECT_TRUE(out.items.empty());
    }
    // No body at all (a 204, say) is named as such.
    for (const char* body : {"", " \r\n"}) {
        auto out = split_batch_response(s, "users", body, {"1"});
        EXPECT_EQ(out.error, "upstream batch answer is empty") << body;
        EXPECT_TRUE(out.items.empty());
    }
}

// 1E400 is valid JSON (RFC 8259 section 6) that nlohmann does not read (section 9 allows the
// limit): the batch fails, saying why; a number past 64 bits but inside a double's range does not.
TEST(SplitA, ANumberBeyondADoublesRangeFailsTheBatchSayingSo) {
    auto s = users_api();
    for (const char* body : {R"([{"id":"1","v":1E400},{"id":"2"}])", R"([{"id":"1","v":-2e308}])"}) {
        auto out = split_batch_response(s, "users", body, {"1", "2"});
        EXPECT_EQ(out.error, "upstream batch answer holds a number beyond what the gateway reads (about ±1.8e308)") << body;
    }
    auto out = split_batch_response(s, "users", R"([{"id":"1","v":1E300,"w":123456789012345678901234567890}])", {"1"});
    ASSERT_TRUE(out.error.empty()) << out.error;
    EXPECT_EQ(out.at("1").body, R"({"id":"1","v":1E300,"w":123456789012345678901234567890})");
    // The first fault decides: a syntax error before the number is "not valid JSON".
    EXPECT_EQ(split_batch_response(s, "users", R"([{"id":"1",,"v":1E400}])", {"1"}).error,
              "upstream batch answer is not valid JSON");
}

TEST(SplitA, RootNotAnArrayFailsTheWholeBatch) {
    auto s = users_api();
    auto out = split_batch_response(s, "users", R"({"id":"1"})", {"1"});
    EXPECT_FALSE(out.error.empty());
    EXPECT_TRUE(out.items.empty());
}

TEST(SplitA, InvalidUtf8InItemsDoesNotThrow) {
    auto s = users_api();
    // Parsing rejects invalid UTF-8 in strings: the batch fails cleanly instead of throwing.
    split_outcome out;
    ASSERT_NO_THROW(out = split_batch_response(s, "users", "[{\"id\":\"1\",\"n\":\"\xff\"}]", {"1"}));
    EXPECT_FALSE(out.error.empty());
    // A key with invalid UTF-8 in the missing-key message still gives a valid JSON body.
    ASSERT_NO_THROW(out = split_batch_response(s, "users", "[]", {"\xff"}));
    EXPECT_TRUE(json::accept(out.at("\xff").body));
}

// ---------------------------------------------------------------- split: B

TEST(SplitB, ReferenceResponse) {
    auto s = activities_api();
    auto out = split_batch_response(s, "activities", b_response, {"a1", "a2"});
    ASSERT_TRUE(out.error.empty()) << out.error;
    EXPECT_EQ(out.ignored_items, 0u);

    EXPECT_EQ(out.at("a1").status, 200);
    EXPECT_EQ(out.at("a1").body, R"({"id":"a1","name":"x"})");

    EXPECT_EQ(out.at("a2").status, 404);
    EXPECT_EQ(error_json(out.at("a2")),
              json::parse(R"({"error":"upstream_item_error","message":"not found","route":"activities"})"));
}

TEST(SplitB, StatusFromMapWhenNoStatusCode) {
    auto s = activities_api();
    s.response.lists[0].status_map = {{"success", 200}, {"error", 500}, {"true", 201}, {"3", 202}};
    auto out = split_batch_response(s, "activities", R"({"results":[
        {"id":"a1","status":"error"},
        {"id":"a2","status":true,"data":{"ok":1}},
        {"id":"a3","status":3,"data":{}},
        {"id":"a4","status":"error","status_code":0,"error":"boom"}]})",
                                    {"a1", "a2", "a3", "a4"});
    ASSERT_TRUE(out.error.empty()) << out.error;
    EXPECT_EQ(out.at("a1").status, 500);
    EXPECT_EQ(error_json(out.at("a1"))["message"], "upstream reported status 500 for this item");
    EXPECT_EQ(out.at("a2").status, 201);
    EXPECT_EQ(out.at("a2").body, R"({"ok":1})");
    EXPECT_EQ(out.at("a3").status, 202);
    EXPECT_EQ(out.at("a4").status, 500);  // status_code out of range: fall back to status
    EXPECT_EQ(error_json(out.at("a4"))["message"], "boom");
}

// A null status is matched by the key "null", like true by "true"; unmapped, it is unknown (502).
TEST(SplitB, NullStatusMatchesTheKeyNull) {
    auto s = activities_api();
    s.response.lists[0].status_code.clear();
    s.response.lists[0].status_map = {{"success", 200}, {"null", 202}};
    auto out = split_batch_response(s, "activities", R"({"results":[{"id":"a1","status":null,"data":{"x":1}}]})", {"a1"});
    ASSERT_TRUE(out.error.empty()) << out.error;
    EXPECT_EQ(out.at("a1").status, 202);
    EXPECT_EQ(out.at("a1").body, R"({"x":1})");
    s.response.lists[0].status_map = {{"success", 200}};
    out = split_batch_response(s, "activities", R"({"results":[{"id":"a1","status":null,"data":{"x":1}}]})", {"a1"});
    ASSERT_TRUE(out.error.empty()) << out.error;
    EXPECT_EQ(out.at("a1").status, 502);
    EXPECT_NE(error_json(out.at("a1"))["message"].get<std::string>().find("unknown item status null"), std::string::npos);
}

// An item whose status_code cannot be read is never taken for a success (fail closed).
TEST(SplitB, UnreadableStatusCodeWithoutStatusFieldIs502) {
    auto s = activities_api();
    s.response.lists[0].status_field.clear();
    auto out = split_batch_response(s, "activities", R"({"results":[
        {"id":"a1","status_code":"404","data":{"id":"a1"}},
        {"id":"a2","status_code":600,"data":{"id":"a2"}},
        {"id":"a3","status_code":null,"data":{"id":"a3"}},
        {"id":"a4","data":{"id":"a4"}},
        {"id":"a5","status_code":404,"error":"not found"}]})",
                                    {"a1", "a2", "a3", "a4", "a5"});
    ASSERT_TRUE(out.error.empty()) << out.error;
    EXPECT_EQ(out.at("a1").status, 502);
    EXPECT_NE(error_json(out.at("a1"))["message"].get<std::string>().find("invalid item status code \"404\""),
              std::string::npos);
    EXPECT_EQ(out.at("a2").status, 502);
    EXPECT_EQ(out.at("a3").status, 200);  // null: no status code given
    EXPECT_EQ(out.at("a4").status, 200);
    EXPECT_EQ(out.at("a5").status, 404);
}

// The answer is read from its text, not a parse: escapes, numbers written as floats and
// names repeated across nesting read as the parse would read them.
TEST(SplitB, ItemsReadFromTheTextAsTheParseReadsThem) {
    auto s = activities_api();
    s.response.lists[0].status_map = {{"success", 200}, {"err\"or", 409}, {"true", 202}, {"1.5", 203}};
    auto out = split_batch_response(s, "activities", R"({"results":[
        {"\u0069d":"a\u0031","status_code":2e2,"data":{"id":"a1","x":{"id":2}}},
        {"id":"a2","status_code":201.0,"data":[{"k":1},{"k":2}]},
        {"id":"a3","status":"err\"or","error":"gone \u00e9"},
        {"id":"a4","status":true,"data":{}},
        {"id":"a5","status":1.50,"data":7},
        {"id":"a6","status_code":2.5e2,"data":{}},
        {"id":"a7","status_code":-200,"data":{}},
        {"id":"a8","status":{"s":1},"data":{}}]})",
                                    {"a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8"});
    ASSERT_TRUE(out.error.empty()) << out.error;
    EXPECT_EQ(out.at("a1").status, 200);
    EXPECT_EQ(out.at("a1").body, R"({"id":"a1","x":{"id":2}})");
    EXPECT_EQ(out.at("a2").status, 201);
    EXPECT_EQ(out.at("a2").body, R"([{"k":1},{"k":2}])");
    EXPECT_EQ(out.at("a3").status, 409);
    EXPECT_EQ(error_json(out.at("a3"))["message"], "gone \xC3\xA9");
    EXPECT_EQ(out.at("a4").status, 202);
    EXPECT_EQ(out.at("a5").status, 203);  // the number as the parse prints it
    EXPECT_EQ(out.at("a5").body, "7");
    EXPECT_EQ(out.at("a6").status, 250);  // a whole number, however written
    EXPECT_EQ(out.at("a7").status, 502);
    EXPECT_NE(error_json(out.at("a7"))["message"].get<std::string>().find("invalid item status code -200"),
              std::string::npos);
    EXPECT_EQ(out.at("a8").status, 502);
    EXPECT_NE(error_json(out.at("a8"))["message"].get<std::string>().find(R"(unknown item status {"s":1})"),
              std::string::npos);
}

TEST(SplitB, UnknownStatusStringIs502) {
    auto s = activities_api();
    auto out = split_batch_response(
        s, "activities", R"({"results":[{"id":"a1","status":"pending","data":{"id":"a1"}}]})", {"a1"});
    ASSERT_TRUE(out.error.empty());
    EXPECT_EQ(out.at("a1").status, 502);
    auto e = error_json(out.at("a1"));
    EXPECT_EQ(e["error"], "upstream_item_error");
    EXPECT_NE(e["message"].get<std::string>().find("pending"), std::string::npos);
}

TEST(SplitB, SuccessWithoutDataIs502) {
    auto s = activities_api();
    auto out =
        split_batch_response(s, "activities", R"({"results":[{"id":"a1","status":"success"}]})", {"a1"});
    EXPECT_EQ(out.at("a1").status, 502);
    EXPECT_EQ(error_json(out.at("a1"))["message"], "upstream item has no /data");
}

TEST(SplitB, NoStatusPointersMeans200) {
    auto s = activities_api();
    s.response.lists[0].status_code.clear();
    s.response.lists[0].status_field.clear();
    auto out = split_batch_response(
        s, "activities", R"({"results":[{"id":"a1","status_code":404,"data":{"id":"a1"}}]})", {"a1"});
    EXPECT_EQ(out.at("a1").status, 200);
    EXPECT_EQ(out.at("a1").body, R"({"id":"a1"})");
}

TEST(SplitB, ItemsPointerNotAnArray) {
    auto s = activities_api();
    for (const char* body : {R"({"results":{"id":"a1"}})", R"({"data":[]})", R"([])", R"("x")"}) {
        auto out = split_batch_response(s, "activities", body, {"a1"});
        EXPECT_EQ(out.error, "upstream batch answer has no array at /results") << body;
        EXPECT_TRUE(out.items.empty());
    }
}

// ---------------------------------------------------------------- split: by_position

TEST(SplitByPosition, ItemIBelongsToKeyI) {
    auto s = users_api();
    s.response.lists[0].by_position = true;
    s.response.lists[0].key.clear();
    auto out = split_batch_response(s, "users", R"([{"name":"one"},{"name":"two"}])", {"1", "2"});
    ASSERT_TRUE(out.error.empty()) << out.error;
    EXPECT_EQ(json::parse(out.at("1").body)["name"], "one");
    EXPECT_EQ(json::parse(out.at("2").body)["name"], "two");
}

TEST(SplitByPosition, WrongLengthFailsTheWholeBatch) {
    auto s = users_api();
    s.response.lists[0].by_position = true;
    auto out = split_batch_response(s, "users", R"([{"name":"one"}])", {"1", "2"});
    EXPECT_FALSE(out.error.empty());
    EXPECT_TRUE(out.items.empty());
    out = split_batch_response(s, "users", R"([1,2,3])", {"1", "2"});
    EXPECT_FALSE(out.error.empty());
}

TEST(SplitByPosition, BareIdListWithRootKey) {
    // D's "accepted":["e-1"] lists bare ids: the key pointer "" is the item itself.
    auto s = users_api();
    s.response.lists[0].items = "/accepted";
    s.response.lists[0].key = {""};
    auto out = split_batch_response(s, "progress", R"({"accepted":["e-1"],"duplicates":["e-0"]})",
                                    {"e-1", "e-0"});
    EXPECT_EQ(out.at("e-1").status, 200);
    EXPECT_EQ(out.at("e-1").body, R"("e-1")");
    EXPECT_EQ(out.at("e-0").status, 404);
}

// ================================================================ write coalescing: C, D, E, F
// The settings are the reference routes of tests/testdata/write_routes.yaml, as the loader
// builds them (docs/design/write-coalescing.md section 8).

const config::gateway_config& write_routes() {
    static const config::gateway_config cfg = config::load_file(std::string(BATCHGATE_TESTDATA) + "/write_routes.yaml");
    return cfg;
}

const coalesce_settings& write_route(const std::string& name) {
    for (const auto& r : write_routes().routes)
        if (r.name == name) return r.coalesce;
    throw std::runtime_error("no route " + name);
}

fake_request caller(std::string method, std::string path, routes::param_list params, std::string body = {}) {
    fake_request r;
    r.method = std::move(method);
    r.path = std::move(path);
    r.path_params = std::move(params);
    r.body = std::move(body);
    return r;
}

json built(const coalesce_settings& s, const fake_request& r, const std::string& key) {
    auto b = build_item(s, r.view(), key);
    EXPECT_TRUE(b.item) << b.error;
    return b.item ? *b.item : json();
}

bool is_correlation_id(const std::string& k) {
    if (k.size() < 11 || k.rfind("bg-", 0) != 0 || k[9] != '-') return false;
    auto hex = [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); };
    return std::all_of(k.begin() + 3, k.begin() + 9, hex) && std::all_of(k.begin() + 10, k.end(), hex);
}

// ---------------------------------------------------------------- generate_correlation_id

TEST(CorrelationId, FormatAndUniqueAcrossThreads) {
    const auto first = generate_correlation_id();
    EXPECT_TRUE(is_correlation_id(first)) << first;
    std::vector<std::vector<std::string>> per_thread(4);
    std::vector<std::thread> threads;
    for (auto& ids : per_thread)
        threads.emplace_back([&ids] {
            for (int i = 0; i < 2000; ++i) ids.push_back(generate_correlation_id());
        });
    for (auto& t : threads) t.join();
    std::set<std::string> all{first};
    for (const auto& ids : per_thread)
        for (const auto& id : ids) {
            EXPECT_EQ(id.substr(0, 10), first.substr(0, 10)) << "one random prefix per process";
            all.insert(id);
        }
    EXPECT_EQ(all.size(), 8001u);
}

TEST(CorrelationId, CounterIsHex) {
    const auto a = generate_correlation_id();
    const auto b = generate_correlation_id();
    EXPECT_EQ(std::stoull(b.substr(10), nullptr, 16), std::stoull(a.substr(10), nullptr, 16) + 1);
}

// ---------------------------------------------------------------- extract_key: generation

TEST(ExtractKey, GenerateAlwaysIgnoresTheRequest) {
    auto s = users_api();
    s.key = {value_source::path, "", config::key_generation::always};
    fake_request r;
    auto a = extract_key(s, r.view());
    auto b = extract_key(s, r.view());
    ASSERT_TRUE(a.key && b.key);
    EXPECT_TRUE(a.generated);
    EXPECT_TRUE(is_correlation_id(*a.key)) << *a.key;
    EXPECT_NE(*a.key, *b.key);
}

TEST(ExtractKey, GenerateWhenMissingKeepsNaturalKeys) {
    const auto& e = write_route("documents");
    auto put = caller("PUT", "/api/v1/workspaces/w/documents/doc_9", {{"ws", "w"}, {"doc_id", "doc_9"}});
    auto k = extract_key(e, put.view());
    EXPECT_EQ(k.key, "doc_9");
    EXPECT_FALSE(k.generated);
    auto post = caller("POST", "/api/v1/workspaces/w/documents", {{"ws", "w"}});
    k = extract_key(e, post.view());
    ASSERT_TRUE(k.key) << k.error;
    EXPECT_TRUE(k.generated);
    EXPECT_TRUE(is_correlation_id(*k.key)) << *k.key;

    auto s = users_api();
    s.key = {value_source::body, "/id", config::key_generation::when_missing};
    fake_request r;
    r.body = R"({"name":"x"})";
    EXPECT_TRUE(extract_key(s, r.view()).generated);
    r.body = R"({"id":"n-1"})";
    EXPECT_EQ(extract_key(s, r.view()).key, "n-1");
    r.body = "not json";  // not a missing key: on_missing_key decides
    k = extract_key(s, r.view());
    EXPECT_FALSE(k.key);
    EXPECT_EQ(k.error, "request body is not valid JSON");
}

// ---------------------------------------------------------------- build_item

TEST(BuildItem, DefaultItemIsTheKey) {
    auto s = activities_api();
    fake_request r;
    EXPECT_EQ(built(s, r, "a1"), json("a1"));
    EXPECT_EQ(item_cost(json("a1")), item_cost(s, "a1"));  // the same bytes as before items existed
}

TEST(BuildItem, AQueryEncodingBuildsNoPayloadButStillSendsTheKeys) {
    // Only keys go on a query-encoded batch call: the item holds nothing per caller, and two
    // callers of one key still share (their items compare equal).
    auto s = users_api();
    fake_request r;
    const auto a = build_item(s, r.view(), "7"), b = build_item(s, r.view(), "7");
    ASSERT_TRUE(a.item && b.item) << a.error;
    EXPECT_TRUE(a.item->is_null());
    EXPECT_EQ(*a.item, *b.item);
    EXPECT_EQ(build_batch_request(s, {}, {"7", "9"}, {*a.item, json()}).target, "/users?ids=7,9");
}

TEST(BuildItem, PlaceholdersValuesAndRemoval) {
    auto s = activities_api();
    s.request.item = json::parse(R"({
        "k": "{key}", "m": "{method}", "p": "{path.id}", "q": "{query.v}", "h": "{header.x-h}",
        "whole": "{body}", "ptr": "{body./a/b}", "missing": "{body./nope}", "nq": "{query.none}",
        "text": "{method}:{path.id}/{body./a}/{query.none}", "map": "{map.op}", "nomap": "{map.other}",
        "arr": ["{path.none}", 1, "{key}"], "lit": "{not a placeholder}", "n": 5})");
    s.request.maps = {{"op", {{"PATCH", json{{"kind", "patch"}}}}}, {"other", {{"POST", "x"}}}};
    auto r = caller("patch", "/x/7", {{"id", "7"}}, R"({"a":{"b":[1,2]},"c":null})");
    r.query = "v=1&v=2";
    r.headers["x-h"] = "hv";
    EXPECT_EQ(built(s, r, "k-1"), json::parse(R"({
        "k": "k-1", "m": "PATCH", "p": "7", "q": "1", "h": "hv",
        "whole": {"a":{"b":[1,2]},"c":null}, "ptr": [1,2],
        "text": "PATCH:7/{\"b\":[1,2]}/", "map": {"kind":"patch"},
        "arr": [1, "k-1"], "lit": "{not a placeholder}", "n": 5})"));
    // The template is untouched for the next caller.
    EXPECT_EQ(s.request.item["k"], "{key}");
}

TEST(BuildItem, BodyAbsentOrNotJson) {
    auto s = activities_api();
    s.request.item = json::parse(R"({"k":"{key}","data":"{body}","t":"{body./type}"})");
    auto r = caller("DELETE", "/x/1", {{"id", "1"}});
    EXPECT_EQ(built(s, r, "1"), json::parse(R"({"k":"1"})"));  // no body: both removed

    r.body = "{oops";
    auto b = build_item(s, r.view(), "1");
    EXPECT_FALSE(b.item);
    EXPECT_EQ(b.error, "request body is not valid JSON");

    // A template that does not use the body does not care what it is.
    s.request.item = json::parse(R"({"k":"{key}"})");
    EXPECT_EQ(built(s, r, "1"), json::parse(R"({"k":"1"})"));
    s.request.item = "{body}";
    r.body.clear();
    EXPECT_EQ(built(s, r, "1"), json(nullptr));  // a removed whole item is null
}

TEST(BuildItem, TypeSuffixes) {
    auto s = activities_api();
    s.request.item = json::parse(R"({"i":"{path.i:int}","n":"{path.n:number}","b":"{path.b:bool}",
        "j":"{header.x-j:json}","s":"{body./num:string}","bi":"{body./num:int}","bs":"{body./str:json}",
        "f":"{body./f:int}","keep":"{body./obj:json}"})");
    auto r = caller("POST", "/", {{"i", "-4"}, {"n", "2.5e1"}, {"b", "false"}},
                    R"({"num":5,"str":"[1,{\"a\":2}]","f":6.0,"obj":{"x":1}})");
    r.headers["x-j"] = R"({"deep":[true]})";
    EXPECT_EQ(built(s, r, "k"), json::parse(R"({"i":-4,"n":25.0,"b":false,"j":{"deep":[true]},"s":"5","bi":5,
        "bs":[1,{"a":2}],"f":6,"keep":{"x":1}})"));
    EXPECT_TRUE(built(s, r, "k")["i"].is_number_integer());
}

TEST(BuildItem, FailedConversionRejectsThisCallerOnly) {
    auto s = activities_api();
    struct bad_case {
        const char* tmpl;
        const char* error;
    };
    for (const auto& c : {bad_case{"{path.i:int}", "{path.i:int}: \"4x\" is not an integer"},
                          bad_case{"{path.i:number}", "{path.i:number}: \"4x\" is not a number"},
                          bad_case{"{path.i:bool}", "{path.i:bool}: \"4x\" is not true or false"},
                          bad_case{"{path.i:json}", "{path.i:json}: \"4x\" is not valid JSON"},
                          bad_case{"{body./f:int}", "{body./f:int}: 1.5 is not an integer"},
                          bad_case{"x-{path.i:int}", "{path.i:int}: \"4x\" is not an integer"}}) {
        s.request.item = json{{"v", c.tmpl}};
        auto r = caller("PATCH", "/", {{"i", "4x"}}, R"({"f":1.5})");
        auto b = build_item(s, r.view(), "k");
        EXPECT_FALSE(b.item) << c.tmpl;
        EXPECT_EQ(b.error, std::string("cannot build the batch item: ") + c.error) << c.tmpl;
    }
    // "08" would go upstream as 8 while the caller waits for key "08": refused, like "-0" and "+8".
    s.request.item = json{{"v", "{path.i:int}"}};
    for (const char* text : {"08", "-0", "00"}) {
        auto b = build_item(s, caller("PATCH", "/", {{"i", text}}).view(), "k");
        EXPECT_FALSE(b.item) << text;
        EXPECT_NE(b.error.find("is not written as a plain integer"), std::string::npos) << b.error;
    }
    EXPECT_EQ(built(s, caller("PATCH", "/", {{"i", "0"}}), "k"), json::parse(R"({"v":0})"));
    // An absent value is removed, not a failed conversion.
    s.request.item = json{{"v", "{path.none:int}"}};
    EXPECT_EQ(built(s, caller("PATCH", "/", {}), "k"), json::object());
}

// A float converts to an integer only when whole and inside int64's range (the same bound as the
// fan-out templates' :int, routes::whole_int64): 2^63 and beyond fail this caller, -2^63 and
// 9.22e18 (inside the range) convert.
TEST(BuildItem, IntConversionOfFloatsStaysInRange) {
    auto s = activities_api();
    s.request.item = json{{"v", "{body./f:int}"}};
    for (const char* f : {"3e124", "-3e124", "9223372036854775808.0", "-1.8446744073709552e19", "1.5"}) {
        auto b = build_item(s, caller("PATCH", "/", {}, std::string(R"({"f":)") + f + "}").view(), "k");
        EXPECT_FALSE(b.item) << f;
        EXPECT_NE(b.error.find("is not an integer"), std::string::npos) << f << ": " << b.error;
    }
    EXPECT_EQ(built(s, caller("PATCH", "/", {}, R"({"f":-9223372036854775808.0})"), "k")["v"].get<std::int64_t>(),
              std::numeric_limits<std::int64_t>::min());
    EXPECT_EQ(built(s, caller("PATCH", "/", {}, R"({"f":9.22e18})"), "k")["v"].get<std::int64_t>(),
              9220000000000000000LL);
}

// PATCH /api/characters/%2e%2e/abilities/4 must not become POST /api/characters/../abilities/batch.
TEST(BuildItem, DotSegmentInTheBatchPathRejectsThisCallerOnly) {
    auto s = activities_api();
    s.partition.path = {"character_id"};
    s.request.path = "/api/characters/{path.character_id}/abilities/batch";
    for (const char* v : {"..", ".", "%2e%2e"}) {
        auto b = build_item(s, caller("PATCH", "/", {{"character_id", v}}).view(), "k");
        EXPECT_FALSE(b.item) << v;
        EXPECT_EQ(b.error, "cannot build the batch call: a path value is \".\" or \"..\"") << v;
    }
    for (const char* v : {"3", "..x", "a.b"})
        EXPECT_TRUE(build_item(s, caller("PATCH", "/", {{"character_id", v}}).view(), "k").item) << v;
}

TEST(BuildItem, BatchTemplateConversionsAreCheckedPerCaller) {
    auto s = activities_api();
    s.partition.path = {"org"};
    s.request.path = "/orgs/{path.org:int}/batch";
    auto good = caller("POST", "/", {{"org", "12"}});
    EXPECT_TRUE(build_item(s, good.view(), "k").item);
    auto bad = caller("POST", "/", {{"org", "acme"}});
    auto b = build_item(s, bad.view(), "k");
    EXPECT_FALSE(b.item);
    EXPECT_EQ(b.error, "cannot build the batch call: {path.org:int}: \"acme\" is not an integer");

    s.request.path = "/batch";
    s.partition.body = {"/period"};
    s.request.body_template = json::parse(R"({"period":"{body./period:int}","items":"{items}"})");
    bad.body = R"({"period":"p-1"})";
    b = build_item(s, bad.view(), "k");
    EXPECT_EQ(b.error, "cannot build the batch call: {body./period:int}: \"p-1\" is not an integer");
    good.body = R"({"period":"7"})";
    EXPECT_TRUE(build_item(s, good.view(), "k").item);

    // And the batch uses the converted value.
    auto p = make_partition("r", s, good.view());
    EXPECT_EQ(json::parse(build_batch_request(s, p.values, {"k"}, {json("k")}).body),
              json::parse(R"({"period":7,"items":["k"]})"));
}

// ---------------------------------------------------------------- apply_success_status

TEST(SuccessStatus, OnlyExactly200IsReplaced) {
    const auto& e = write_route("documents");
    EXPECT_EQ(apply_success_status(e, "POST", 200), 201);
    EXPECT_EQ(apply_success_status(e, "DELETE", 200), 204);
    EXPECT_EQ(apply_success_status(e, "PUT", 200), 200);
    EXPECT_EQ(apply_success_status(e, "post", 200), 201);
    EXPECT_EQ(apply_success_status(e, "POST", 202), 202);
    EXPECT_EQ(apply_success_status(e, "POST", 409), 409);
    EXPECT_EQ(apply_success_status(users_api(), "POST", 200), 200);
}

// ---------------------------------------------------------------- C abilities

const char* const c_ability4 = R"({"action":"increment","data":{"score":5,"experience_points":75}})";
const char* const c_ability7 = R"({"action":"decrement","data":{"score":2,"experience_points":20}})";

TEST(WritesC, ExactBatchBodyFromPatchCallers) {
    const auto& s = write_route("abilities");
    auto a = caller("PATCH", "/api/characters/3/abilities/4", {{"character_id", "3"}, {"ability_id", "4"}}, c_ability4);
    auto b = caller("PATCH", "/api/characters/3/abilities/7", {{"character_id", "3"}, {"ability_id", "7"}}, c_ability7);
    a.headers["authorization"] = b.headers["authorization"] = "Bearer t";
    auto ka = extract_key(s, a.view());
    auto kb = extract_key(s, b.view());
    ASSERT_EQ(ka.key, "4");
    ASSERT_EQ(kb.key, "7");
    auto pa = make_partition("abilities", s, a.view());
    EXPECT_EQ(pa.key, make_partition("abilities", s, b.view()).key);
    auto other = caller("PATCH", "/api/characters/5/abilities/4", {{"character_id", "5"}, {"ability_id", "4"}}, c_ability4);
    other.headers["authorization"] = "Bearer t";
    EXPECT_NE(pa.key, make_partition("abilities", s, other.view()).key) << "one batch per character";

    auto out = build_batch_request(s, pa.values, {"4", "7"}, {built(s, a, "4"), built(s, b, "7")});
    EXPECT_EQ(out.method, "POST");
    EXPECT_EQ(out.target, "/api/characters/3/abilities/batch");
    EXPECT_EQ(out.body, R"({"operations":[{"abilityId":4,"action":"increment","data":{"experience_points":75,"score":5}},)"
                        R"({"abilityId":7,"action":"decrement","data":{"experience_points":20,"score":2}}]})");
    EXPECT_EQ(json::parse(out.body), json::parse(R"(
        {"operations":[{"abilityId":4,"action":"increment","data":{"score":5,"experience_points":75}},
                       {"abilityId":7,"action":"decrement","data":{"score":2,"experience_points":20}}]})"));
    EXPECT_EQ(out.headers, (std::vector<std::pair<std::string, std::string>>{
                               {"authorization", "Bearer t"}, {"content-type", "application/json"}}));
}

TEST(WritesC, NonNumericAbilityIdIs400ForThatCaller) {
    const auto& s = write_route("abilities");
    auto r = caller("PATCH", "/api/characters/3/abilities/fire", {{"character_id", "3"}, {"ability_id", "fire"}}, c_ability4);
    auto b = build_item(s, r.view(), "fire");
    EXPECT_FALSE(b.item);
    EXPECT_EQ(b.error, "cannot build the batch item: {path.ability_id:int}: \"fire\" is not an integer");
}

TEST(WritesC, SplitSuccessTrueAndFalse) {
    const auto& s = write_route("abilities");
    auto out = split_batch_response(s, "abilities", R"({"status":"success","results":[
        {"abilityId":4,"action":"increment","success":true,
         "data":{"id":4,"ability_name":"Area Lore","score":5,"effective_score":6,"experience_points":75}},
        {"abilityId":7,"action":"decrement","success":true,"data":{"id":7,"score":2}}]})",
                                    {"4", "7"});
    ASSERT_TRUE(out.error.empty()) << out.error;
    EXPECT_EQ(out.at("4").status, 200);
    EXPECT_EQ(json::parse(out.at("4").body),
              json::parse(R"({"id":4,"ability_name":"Area Lore","score":5,"effective_score":6,"experience_points":75})"));
    EXPECT_EQ(json::parse(out.at("7").body), json::parse(R"({"id":7,"score":2})"));

    // The all-or-nothing 422 answer: the failing operation is found, the others are not in it.
    out = split_batch_response(s, "abilities", R"({"status":"error","results":[
        {"abilityId":7,"action":"decrement","success":false,"error":"score would be negative"}]})",
                               {"4", "7"});
    ASSERT_TRUE(out.error.empty()) << out.error;
    EXPECT_EQ(out.at("7").status, 422);
    EXPECT_EQ(error_json(out.at("7")),
              json::parse(R"({"error":"upstream_item_error","message":"score would be negative","route":"abilities"})"));
    EXPECT_EQ(out.at("4").status, 404);
    EXPECT_EQ(error_json(out.at("4"))["error"], "not_found");
}

// ---------------------------------------------------------------- D progress events

const char* const d_event1 = R"({"type":"lesson_progress","courseId":"foundations","lessonId":"lesson-video","userId":"demo-user","percent":42,"position":185,"clientEventId":"e-1","timestamp":1730956800000})";
const char* const d_event2 = R"({"type":"lesson_progress","courseId":"foundations","lessonId":"lesson-quiz","userId":"demo-user","percent":100,"position":0,"clientEventId":"e-2","timestamp":1730956801000})";

TEST(WritesD, EventsAreTheWholeBodies) {
    const auto& s = write_route("progress");
    auto a = caller("POST", "/api/client/progress", {}, d_event1);
    auto b = caller("POST", "/api/client/progress", {}, d_event2);
    ASSERT_EQ(extract_key(s, a.view()).key, "e-1");
    ASSERT_EQ(extract_key(s, b.view()).key, "e-2");
    const json ia = built(s, a, "e-1");
    EXPECT_EQ(ia, json::parse(d_event1));
    EXPECT_EQ(item_cost(ia), ia.dump().size() + 1);
    auto out = build_batch_request(s, make_partition("progress", s, a.view()).values, {"e-1", "e-2"},
                                   {ia, built(s, b, "e-2")});
    EXPECT_EQ(out.target, "/api/client/progress/batch");
    EXPECT_EQ(json::parse(out.body),
              (json{{"events", json::array({json::parse(d_event1), json::parse(d_event2)})}}));
}

TEST(WritesD, EventWithoutClientEventIdIsNamed) {
    const auto& s = write_route("progress");
    auto r = caller("POST", "/api/client/progress", {}, R"({"type":"lesson_progress","percent":42})");
    auto k = extract_key(s, r.view());
    EXPECT_FALSE(k.key);
    EXPECT_EQ(k.error, "item key /clientEventId is missing from the request body");
}

TEST(WritesD, SplitAcceptedDuplicatesAndFailed) {
    const auto& s = write_route("progress");
    auto out = split_batch_response(
        s, "progress",
        R"({"accepted":["e-1","e-3"],"duplicates":["e-0"],"failed":[{"id":"e-9","reason":"validation_error"}]})",
        {"e-1", "e-0", "e-9", "e-5"});
    ASSERT_TRUE(out.error.empty()) << out.error;
    EXPECT_EQ(out.at("e-1").status, 202);
    EXPECT_EQ(out.at("e-1").body, R"({"status":"accepted"})");
    EXPECT_EQ(out.at("e-0").status, 200);
    EXPECT_EQ(out.at("e-0").body, R"({"status":"duplicate"})");
    EXPECT_EQ(out.at("e-9").status, 422);
    // No `error` pointer on the list: the upstream's own failed entry is the caller's answer.
    EXPECT_EQ(error_json(out.at("e-9")), json::parse(R"({"id":"e-9","reason":"validation_error"})"));
    EXPECT_EQ(out.at("e-5").status, 404);
    EXPECT_EQ(error_json(out.at("e-5"))["message"], "no item with key \"e-5\" in the upstream batch answer");
    EXPECT_EQ(out.ignored_items, 1u);  // e-3 was not asked for

    auto with_reason = s;
    with_reason.response.lists[2].error = "/reason";
    out = split_batch_response(with_reason, "progress", R"({"accepted":[],"duplicates":[],"failed":[{"id":"e-9","reason":"validation_error"}]})",
                               {"e-9"});
    EXPECT_EQ(error_json(out.at("e-9"))["message"], "validation_error");
}

// A two-key entry decides only where its list is the key's first: e-1 is accepted under either
// reading of the failed entry, e-9 is failed under one and missing under the other.
TEST(WritesD, ATwoKeyEntryInALaterListDoesNotUndoTheFirstListsAnswer) {
    const auto& s = write_route("progress");
    auto out = split_batch_response(
        s, "progress", R"({"accepted":["e-1"],"duplicates":[],"failed":[{"id":"e-1","id":"e-9"}]})", {"e-1", "e-9"});
    ASSERT_TRUE(out.error.empty()) << out.error;
    EXPECT_EQ(out.at("e-1").status, 202);
    EXPECT_EQ(out.at("e-9").status, 502);
    out = split_batch_response(s, "progress", R"({"accepted":[],"duplicates":[],"failed":[{"id":"e-9","id":"e-1"}]})",
                               {"e-1", "e-9"});
    ASSERT_TRUE(out.error.empty()) << out.error;
    EXPECT_EQ(out.at("e-1").status, 502);
    EXPECT_EQ(out.at("e-9").status, 502);
}

TEST(WritesD, FirstListWinsAndAbsentListsAreEmpty) {
    const auto& s = write_route("progress");
    auto out = split_batch_response(s, "progress", R"({"accepted":["e-1"],"duplicates":["e-1"]})", {"e-1"});
    ASSERT_TRUE(out.error.empty()) << out.error;
    EXPECT_EQ(out.at("e-1").status, 202);
    EXPECT_EQ(out.at("e-1").body, R"({"status":"accepted"})");

    out = split_batch_response(s, "progress", R"({"duplicates":["e-1"]})", {"e-1", "e-2"});
    ASSERT_TRUE(out.error.empty()) << out.error;
    EXPECT_EQ(out.at("e-1").status, 200);
    EXPECT_EQ(out.at("e-2").status, 404);

    out = split_batch_response(s, "progress", R"({"accepted":"e-1"})", {"e-1"});
    EXPECT_EQ(out.error, "upstream batch answer has no array at /accepted");
    EXPECT_TRUE(out.items.empty());
    out = split_batch_response(s, "progress", R"({"status":"ok"})", {"e-1"});
    EXPECT_EQ(out.error, "upstream batch answer has none of the result lists (/accepted, /duplicates, /failed)");
}

// ---------------------------------------------------------------- E documents

TEST(WritesE, OperationsWithGeneratedClientIdAndMethodMap) {
    const auto& s = write_route("documents");
    const std::string ws = "550e8400-e29b-41d4-a716-446655440000";
    auto create = caller("POST", "/api/v1/workspaces/" + ws + "/documents", {{"ws", ws}},
                         R"({"title":"New","content":"# Hello"})");
    auto update = caller("PUT", "/api/v1/workspaces/" + ws + "/documents/doc_9", {{"ws", ws}, {"doc_id", "doc_9"}},
                         R"({"version":3,"title":"x"})");
    auto remove = caller("DELETE", "/api/v1/workspaces/" + ws + "/documents/doc_4", {{"ws", ws}, {"doc_id", "doc_4"}});

    auto kc = extract_key(s, create.view());
    ASSERT_TRUE(kc.key && kc.generated) << kc.error;
    const std::string op1 = *kc.key;
    ASSERT_EQ(extract_key(s, update.view()).key, "doc_9");
    ASSERT_EQ(extract_key(s, remove.view()).key, "doc_4");

    const json ic = built(s, create, op1);
    EXPECT_EQ(ic, (json{{"operation", "create"}, {"client_id", op1}, {"data", {{"title", "New"}, {"content", "# Hello"}}}}));
    EXPECT_FALSE(ic.contains("document_id")) << "a create has no document_id key at all";
    const json iu = built(s, update, "doc_9");
    EXPECT_EQ(iu, json::parse(R"({"operation":"update","client_id":"doc_9","document_id":"doc_9","data":{"version":3,"title":"x"}})"));
    const json id = built(s, remove, "doc_4");
    EXPECT_EQ(id, json::parse(R"({"operation":"delete","client_id":"doc_4","document_id":"doc_4"})"));

    auto p = make_partition("documents", s, create.view());
    EXPECT_EQ(p.key, make_partition("documents", s, remove.view()).key) << "one batch per workspace";
    auto out = build_batch_request(s, p.values, {op1, "doc_9", "doc_4"}, {ic, iu, id});
    EXPECT_EQ(out.method, "POST");
    EXPECT_EQ(out.target, "/api/v1/documents/batch");
    EXPECT_EQ(json::parse(out.body), json::parse(R"({"workspace_id":"550e8400-e29b-41d4-a716-446655440000","atomic":false,
        "operations":[{"operation":"create","client_id":")" + op1 + R"(","data":{"title":"New","content":"# Hello"}},
                      {"operation":"update","client_id":"doc_9","document_id":"doc_9","data":{"version":3,"title":"x"}},
                      {"operation":"delete","client_id":"doc_4","document_id":"doc_4"}]})"));
}

TEST(WritesE, SplitStatusStringsAndSuccessStatus) {
    const auto& s = write_route("documents");
    auto out = split_batch_response(s, "documents", R"({"total":5,"successful":2,"failed":3,"results":[
        {"client_id":"bg-1-1","status":"success","document_id":"doc_abc","version":1},
        {"client_id":"doc_9","status":"conflict","error":"version mismatch"},
        {"client_id":"doc_4","status":"success"},
        {"client_id":"doc_5","status":"error","error":"bad title"},
        {"client_id":"doc_6","status":"skipped"}],"processing_time_ms":120})",
                                    {"bg-1-1", "doc_9", "doc_4", "doc_5", "doc_6"});
    ASSERT_TRUE(out.error.empty()) << out.error;
    const auto& created = out.at("bg-1-1");
    EXPECT_EQ(created.status, 200);
    EXPECT_EQ(apply_success_status(s, "POST", created.status), 201);
    EXPECT_EQ(json::parse(created.body),
              json::parse(R"({"client_id":"bg-1-1","status":"success","document_id":"doc_abc","version":1})"));
    EXPECT_EQ(out.at("doc_9").status, 409);
    EXPECT_EQ(apply_success_status(s, "PUT", 409), 409);
    EXPECT_EQ(error_json(out.at("doc_9")),
              json::parse(R"({"error":"upstream_item_error","message":"version mismatch","route":"documents"})"));
    EXPECT_EQ(out.at("doc_4").status, 200);
    EXPECT_EQ(apply_success_status(s, "DELETE", out.at("doc_4").status), 204);
    EXPECT_EQ(out.at("doc_5").status, 422);
    EXPECT_EQ(error_json(out.at("doc_5"))["message"], "bad title");
    EXPECT_EQ(out.at("doc_6").status, 424);
    EXPECT_EQ(error_json(out.at("doc_6"))["message"], "upstream reported status 424 for this item");
}


// ---------------------------------------------------------------- issue 10: in_batch, rules, templates, bytes

// Two increments of one ability in one call: the n-th result for a key answers its n-th caller,
// whether the answer comes in the order asked (read by position) or in another (by key).
TEST(WritesC, SeveralOperationsOnOneKeyAreMatchedByOccurrence) {
    const auto& s = write_route("abilities");
    const std::string one_23 = R"({"abilityId":1,"action":"increment","success":true,"data":{"id":1,"score":23}})";
    const std::string seven = R"({"abilityId":7,"action":"decrement","success":true,"data":{"id":7,"score":2}})";
    const std::string one_24 = R"({"abilityId":1,"action":"increment","success":true,"data":{"id":1,"score":24}})";
    for (const auto& results : {one_23 + "," + seven + "," + one_24, seven + "," + one_23 + "," + one_24}) {
        auto out = split_batch_response(s, "abilities", R"({"status":"success","results":[)" + results + "]}",
                                        {"1", "7", "1"});
        ASSERT_TRUE(out.error.empty()) << out.error;
        ASSERT_EQ(out.items.size(), 3u);
        EXPECT_EQ(json::parse(out.items[0].body)["score"], 23) << results;
        EXPECT_EQ(json::parse(out.items[1].body)["score"], 2);
        EXPECT_EQ(json::parse(out.items[2].body)["score"], 24);
        EXPECT_EQ(json::parse(out.find("1", 1)->body)["score"], 24);
        EXPECT_EQ(out.find("1", 2), nullptr);
    }
}

// Two operations on one key, one of three results for it naming two keys: the last copies give
// the key two results for two operations, the first copies three: neither operation takes one.
TEST(WritesC, ATwoKeyResultFailsEveryOperationOnItsKeys) {
    const auto& s = write_route("abilities");
    auto out = split_batch_response(s, "abilities", R"({"status":"success","results":[
        {"abilityId":1,"abilityId":7,"success":true,"data":{"score":22}},
        {"abilityId":1,"success":true,"data":{"score":23}},
        {"abilityId":1,"success":true,"data":{"score":24}}]})",
                                    {"1", "1"});
    ASSERT_TRUE(out.error.empty()) << out.error;
    ASSERT_EQ(out.items.size(), 2u);
    EXPECT_EQ(out.items[0].status, 502);
    EXPECT_EQ(out.items[1].status, 502);
}

TEST(WritesC, AKeyAnsweredAnotherNumberOfTimesThanAskedIs502ForEachOperation) {
    const auto& s = write_route("abilities");
    auto out = split_batch_response(s, "abilities", R"({"status":"success","results":[
        {"abilityId":1,"success":true,"data":{"score":23}},
        {"abilityId":7,"success":true,"data":{"score":2}}]})",
                                    {"1", "7", "1"});
    ASSERT_TRUE(out.error.empty()) << out.error;
    EXPECT_EQ(out.items[0].status, 502);
    EXPECT_EQ(out.items[2].status, 502);
    EXPECT_EQ(error_json(out.items[0])["message"], "upstream returned key \"1\" 1 times for 2 operations");
    EXPECT_EQ(out.items[1].status, 200);
    // Not answered at all: missing, for each operation.
    out = split_batch_response(s, "abilities", R"({"results":[{"abilityId":7,"success":true,"data":{}}]})", {"1", "7", "1"});
    EXPECT_EQ(out.items[0].status, 404);
    EXPECT_EQ(out.items[2].status, 404);
}

TEST(WritesC, NamedFailuresComeFromTheRefusedAnswer) {
    coalesce_settings s = write_route("abilities");
    s.failed_items = {};
    const char* refused = R"({"status":"error","results":[{"abilityId":4,"action":"explode","success":false,"error":"invalid action"}]})";
    EXPECT_FALSE(named_failures(s, refused, 64)) << "no failed_items: bisection";
    s.failed_items.items = "/results";
    s.failed_items.key = {"/abilityId"};
    EXPECT_EQ(named_failures(s, refused, 64), (std::vector<std::string>{"4"}));
    s.failed_items.when = {{"/success", json(false)}};
    EXPECT_EQ(named_failures(s, refused, 64), (std::vector<std::string>{"4"}));
    EXPECT_FALSE(named_failures(s, R"({"status":"error","results":[{"abilityId":4,"success":true}]})", 64));
    EXPECT_FALSE(named_failures(s, R"({"status":"error"})", 64));
    EXPECT_FALSE(named_failures(s, "not json", 64));
    EXPECT_FALSE(named_failures(s, R"({"results":[{"abilityId":{"x":1},"success":false}]})", 64));
    // Named as the split routes them: an integer by its digits as written.
    EXPECT_EQ(named_failures(s, R"({"results":[{"abilityId":-0,"success":false},{"abilityId":0,"success":true},)"
                                R"({"abilityId":18446744073709551616,"success":false}]})", 64),
              (std::vector<std::string>{"-0", "18446744073709551616"}));
}

TEST(WritesE, StatusRulesPickTheSingleEndpointsStatusFromSeveralFields) {
    coalesce_settings s = write_route("documents");
    auto& l = s.response.lists.at(0);
    l.status_rules = {{{{"/status", json("error")}, {"/error", json("document not found")}}, 404},
                      {{{"/status", json("error")}, {"/error", json("version required")}}, 400}};
    auto out = split_batch_response(s, "documents", R"({"results":[
        {"client_id":"a","status":"error","error":"document not found"},
        {"client_id":"b","status":"error","error":"version required"},
        {"client_id":"c","status":"error","error":"title too long"},
        {"client_id":"d","status":"conflict","error":"document not found"}]})",
                                    {"a", "b", "c", "d"});
    ASSERT_TRUE(out.error.empty()) << out.error;
    EXPECT_EQ(out.at("a").status, 404);
    EXPECT_EQ(error_json(out.at("a"))["message"], "document not found");
    EXPECT_EQ(out.at("b").status, 400);
    EXPECT_EQ(out.at("c").status, 422) << "no rule: status_map";
    EXPECT_EQ(out.at("d").status, 409) << "every condition of a rule must hold";
}

TEST(WritesE, ResponseTemplateAnswersInTheSingleEndpointsShapePerCaller) {
    coalesce_settings s = write_route("documents");
    auto& l = s.response.lists.at(0);
    l.body_template = json::parse(R"({"id":"{item./document_id}","title":"{body./title}","content":"{body./content}",
                                      "version":"{item./version:int}","workspace":"{path.ws}"})");
    auto create = caller("POST", "/api/v1/workspaces/w1/documents", {{"ws", "w1"}}, R"({"title":"New","content":"# Hi"})");
    const json mine = caller_values(s, create.view());
    EXPECT_EQ(mine, json::parse(R"({"body./title":"New","body./content":"# Hi","path.ws":"w1"})"));
    auto out = split_batch_response(s, "documents", R"({"results":[
        {"client_id":"bg-1","status":"success","document_id":"doc_abc","version":1},
        {"client_id":"bg-2","status":"success","document_id":"doc_x","version":"one"},
        {"client_id":"bg-3","status":"error","error":"bad title"}]})",
                                    {"bg-1", "bg-2", "bg-3"});
    ASSERT_TRUE(out.error.empty()) << out.error;
    auto r = render_answer(out.at("bg-1"), mine, "bg-1");
    ASSERT_TRUE(r.error.empty()) << r.error;
    EXPECT_EQ(json::parse(r.body),
              json::parse(R"({"id":"doc_abc","title":"New","content":"# Hi","version":1,"workspace":"w1"})"));
    // Another caller's values never leak in: an update without content has none.
    auto update = caller("PUT", "/api/v1/workspaces/w1/documents/doc_x", {{"ws", "w1"}, {"doc_id", "doc_x"}},
                         R"({"version":3,"title":"x"})");
    auto bad = render_answer(out.at("bg-2"), caller_values(s, update.view()), "bg-2");
    EXPECT_EQ(bad.error, "cannot build the answer from the upstream item: {item./version:int}: \"one\" is not an integer");
    // Errors keep the gateway's error body.
    auto err = render_answer(out.at("bg-3"), mine, "bg-3");
    EXPECT_EQ(json::parse(err.body)["message"], "bad title");
}

// max_batch_bytes: overhead + item costs is exactly the size of the call as sent.
TEST(BatchBytes, OverheadPlusItemCostsIsExactlyTheCallAsSent) {
    {
        const auto& s = write_route("abilities");
        auto a = caller("PATCH", "/api/characters/3/abilities/4", {{"character_id", "3"}, {"ability_id", "4"}}, c_ability4);
        auto b = caller("PATCH", "/api/characters/3/abilities/7", {{"character_id", "3"}, {"ability_id", "7"}}, c_ability7);
        auto p = make_partition("abilities", s, a.view());
        const json ia = built(s, a, "4"), ib = built(s, b, "7");
        const std::size_t overhead = batch_overhead(s, p.values);
        EXPECT_EQ(build_batch_request(s, p.values, {"4"}, {ia}).body.size(), overhead + item_cost(ia));
        EXPECT_EQ(build_batch_request(s, p.values, {"4", "7", "4"}, {ia, ib, ia}).body.size(),
                  overhead + 2 * item_cost(ia) + item_cost(ib));
    }
    {
        coalesce_settings s = users_api();
        partition_values v;
        const std::size_t overhead = batch_overhead(s, v);
        EXPECT_EQ(build_batch_request(s, v, {"1"}, {}).target.size(), overhead + item_cost(s, "1"));
        EXPECT_EQ(build_batch_request(s, v, {"1", "a b", "777"}, {}).target.size(),
                  overhead + item_cost(s, "1") + item_cost(s, "a b") + item_cost(s, "777"));
        s.request.encoding = batch_encoding::query_repeat;
        s.request.query_param = "id";
        const std::size_t repeat = batch_overhead(s, v);
        EXPECT_EQ(build_batch_request(s, v, {"1", "22"}, {}).target.size(), repeat + item_cost(s, "1") + item_cost(s, "22"));
    }
}

// ---------------------------------------------------------------- F goals

TEST(WritesF, PeriodFromTheBodyPartitionAndIsNewFromTheMap) {
    const auto& s = write_route("goals");
    auto create = caller("POST", "/api/v1/org/acme/goals", {{"org", "acme"}},
                         R"({"period_id":"p-1","type":"performance","title":"Ship","weight":30})");
    auto update = caller("PUT", "/api/v1/org/acme/goals/g-42", {{"org", "acme"}, {"goal_id", "g-42"}},
                         R"({"period_id":"p-1","type":"competency","weight":40})");
    auto kc = extract_key(s, create.view());
    ASSERT_TRUE(kc.key && kc.generated);
    const std::string temp = *kc.key;
    ASSERT_EQ(extract_key(s, update.view()).key, "g-42");

    auto p = make_partition("goals", s, create.view());
    EXPECT_EQ(p.key, make_partition("goals", s, update.view()).key);
    EXPECT_EQ(p.values.body, (std::map<std::string, json>{{"/period_id", "p-1"}}));

    auto out = build_batch_request(s, p.values, {temp, "g-42"}, {built(s, create, temp), built(s, update, "g-42")});
    EXPECT_EQ(out.target, "/api/v1/org/acme/goals/batch-save");
    EXPECT_EQ(json::parse(out.body), json::parse(R"({"period_id":"p-1","goals":[
        {"id":")" + temp + R"(","type":"performance","is_new":true,
         "data":{"period_id":"p-1","type":"performance","title":"Ship","weight":30}},
        {"id":"g-42","type":"competency","is_new":false,"data":{"period_id":"p-1","type":"competency","weight":40}}]})"));
}

TEST(WritesF, PeriodsNeverShareABatch) {
    const auto& s = write_route("goals");
    auto with_body = [&](std::string body) {
        return make_partition("goals", s, caller("POST", "/api/v1/org/acme/goals", {{"org", "acme"}}, std::move(body)).view());
    };
    auto p1 = with_body(R"({"period_id":"p-1","type":"performance"})");
    EXPECT_EQ(p1.key, with_body(R"({"type":"competency","period_id":"p-1"})").key);
    EXPECT_NE(p1.key, with_body(R"({"period_id":"p-2"})").key);
    // Absent, null, empty string and a number are all different.
    std::set<std::string> keys{p1.key};
    for (const char* body : {R"({})", R"({"period_id":null})", R"({"period_id":""})", R"({"period_id":1})",
                             R"({"period_id":"1"})"})
        EXPECT_TRUE(keys.insert(with_body(body).key).second) << body;
    EXPECT_EQ(with_body("not json").key, with_body("{}").key);  // a body that is not JSON has no values
    auto numeric = with_body(R"({"period_id":1})");
    EXPECT_EQ(numeric.values.body.at("/period_id"), json(1));
    EXPECT_EQ(json::parse(build_batch_request(s, numeric.values, {"k"}, {json("k")}).body),
              json::parse(R"({"period_id":1,"goals":["k"]})"));  // the JSON value, not its text
    auto absent = with_body(R"({})");
    EXPECT_TRUE(absent.values.body.empty());
    EXPECT_EQ(json::parse(build_batch_request(s, absent.values, {"k"}, {json("k")}).body),
              json::parse(R"({"goals":["k"]})"));
}

TEST(WritesF, SplitSavedByTempIdOrIdAndFailed) {
    const auto& s = write_route("goals");
    auto out = split_batch_response(s, "goals", R"({"saved":[
        {"tempId":"bg-00abcd-1","serverId":"g-77","data":{"id":"g-77","title":"Ship"}},
        {"id":"g-42","data":{"id":"g-42","weight":40}}],
        "failed":[{"id":"g-13","error":"weight out of range"}]})",
                                    {"bg-00abcd-1", "g-42", "g-13", "g-99"});
    ASSERT_TRUE(out.error.empty()) << out.error;
    EXPECT_EQ(out.at("bg-00abcd-1").status, 200);
    EXPECT_EQ(apply_success_status(s, "POST", 200), 201);
    EXPECT_EQ(json::parse(out.at("bg-00abcd-1").body), json::parse(R"({"id":"g-77","title":"Ship"})"));
    EXPECT_EQ(out.at("g-42").status, 200);
    EXPECT_EQ(apply_success_status(s, "PUT", 200), 200);
    EXPECT_EQ(json::parse(out.at("g-42").body), json::parse(R"({"id":"g-42","weight":40})"));
    EXPECT_EQ(out.at("g-13").status, 422);
    EXPECT_EQ(error_json(out.at("g-13")),
              json::parse(R"({"error":"upstream_item_error","message":"weight out of range","route":"goals"})"));
    EXPECT_EQ(out.at("g-99").status, 404);
}

TEST(WritesF, KeyPointersFirstPresentWins) {
    const auto& s = write_route("goals");
    // tempId present wins over id; an item with neither is ignored.
    auto out = split_batch_response(s, "goals", R"({"saved":[{"tempId":"t-1","id":"g-1","data":1},{"data":2}],"failed":[]})",
                                    {"t-1", "g-1"});
    ASSERT_TRUE(out.error.empty()) << out.error;
    EXPECT_EQ(out.at("t-1").body, "1");
    EXPECT_EQ(out.at("g-1").status, 404);
    EXPECT_EQ(out.ignored_items, 1u);
}

// ---------------------------------------------------------------- lists: details

TEST(SplitLists, FixedStatus204HasNoBodyAndBodyValueOverridesThePointer) {
    auto s = users_api();
    config::result_list deleted;
    deleted.items = "/deleted";
    deleted.key = {""};
    deleted.status = 204;
    config::result_list kept;
    kept.items = "/kept";
    kept.key = {"/id"};
    kept.status = 200;
    kept.body_value = json{{"kept", true}};
    s.response.lists = {deleted, kept};
    auto out = split_batch_response(s, "r", R"({"deleted":["a"],"kept":[{"id":"b"}]})", {"a", "b"});
    ASSERT_TRUE(out.error.empty()) << out.error;
    EXPECT_EQ(out.at("a").status, 204);
    EXPECT_EQ(out.at("a").body, "");
    EXPECT_EQ(out.at("b").body, R"({"kept":true})");
}

TEST(SplitLists, DuplicateInOneListIs502ButAcrossListsTheFirstWins) {
    const auto& s = write_route("goals");
    auto out = split_batch_response(
        s, "goals", R"({"saved":[{"id":"g-1","data":1},{"id":"g-1","data":2}],"failed":[{"id":"g-2"}, {"id":"g-3"}]})",
        {"g-1", "g-3"});
    EXPECT_EQ(out.at("g-1").status, 502);
    EXPECT_EQ(out.at("g-3").status, 422);
    out = split_batch_response(s, "goals", R"({"saved":[{"id":"g-1","data":1}],"failed":[{"id":"g-1","error":"x"}]})",
                               {"g-1"});
    EXPECT_EQ(out.at("g-1").status, 200);
}

TEST(SplitLists, StatusCodePointerAndStatusFieldInAList) {
    auto s = users_api();
    s.response.lists[0].items = "/r";
    s.response.lists[0].status_code = "/code";
    s.response.lists[0].status_field = "/ok";
    s.response.lists[0].status_map = {{"true", 201}, {"false", 400}};
    auto out = split_batch_response(s, "r", R"({"r":[{"id":"a","code":409},{"id":"b","ok":true},{"id":"c","ok":false}]})",
                                    {"a", "b", "c"});
    EXPECT_EQ(out.at("a").status, 409);
    EXPECT_EQ(out.at("b").status, 201);
    EXPECT_EQ(out.at("c").status, 400);
}

TEST(SplitLists, NoListsIsAConfigurationError) {
    auto s = users_api();
    s.response.lists.clear();
    auto out = split_batch_response(s, "r", "[]", {"a"});
    EXPECT_FALSE(out.error.empty());
    EXPECT_TRUE(out.items.empty());
}

TEST(BuildJsonBody, EmptyItemsMeansTheKeys) {
    auto s = activities_api();
    EXPECT_EQ(json::parse(build_batch_request(s, {}, {"a1", "a2"}, {}).body)["ids"], json::parse(R"(["a1","a2"])"));
    EXPECT_EQ(json::parse(build_batch_request(s, {}, {"a1"}, {json{{"x", 1}}}).body)["ids"], json::parse(R"([{"x":1}])"));
}

TEST(BuildJsonBody, BodyPointerPlaceholdersInThePathAreText) {
    auto s = activities_api();
    s.request.path = "/p/{body./period}/{body./obj}/{body./none}";
    partition_values v;
    v.body["/period"] = "a b";
    v.body["/obj"] = json{{"k", 1}};
    EXPECT_EQ(build_batch_request(s, v, {"1"}, {}).target, "/p/a%20b/%7B%22k%22%3A1%7D/");
}

// query_repeat whose path already ends in '?' (or '&'): the first key needs no separator, and the
// overhead says so (regression: counted 1 byte too many).
TEST(BatchBytes, QueryRepeatPathEndingInQuestionMark) {
    coalesce_settings s = users_api();
    s.request.encoding = batch_encoding::query_repeat;
    s.request.query_param = "id";
    for (std::string path : {"/users?", "/users?v=1&"}) {
        s.request.path = path;
        partition_values v;
        const std::size_t overhead = batch_overhead(s, v);
        const auto out = build_batch_request(s, v, {"1", "22"}, {});
        EXPECT_EQ(out.target.size(), overhead + item_cost(s, "1") + item_cost(s, "22")) << out.target;
    }
}

}  // namespace
}  // namespace batchgate::coalescer
