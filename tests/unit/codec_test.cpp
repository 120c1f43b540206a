// Batch codec: what callers share a batch, which key each one contributes, the exact upstream
// call that is sent, and how the batch answer is split back, for the reference APIs A and B.
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "coalescer/core/codec.hpp"

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

TEST(ExtractKey, FromQueryFirstOccurrenceDecoded) {
    auto s = users_api();
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
    EXPECT_EQ(out.items.at("1").status, 200);
    EXPECT_EQ(json::parse(out.items.at("1").body), json::parse(R"({"id":"1","name":"One"})"));
    EXPECT_EQ(out.items.at("7").status, 200);
    EXPECT_EQ(json::parse(out.items.at("7").body)["name"], "Seven");

    EXPECT_EQ(out.items.at("2").status, 404);
    EXPECT_EQ(error_json(out.items.at("2")),
              json::parse(R"({"error":"not_found","route":"users",
                  "message":"no item with key \"2\" in the upstream batch answer"})"));
    EXPECT_EQ(out.ignored_items, 1u);  // id 99 was not asked for
}

TEST(SplitA, IntegerKeysMatchTheirText) {
    auto s = users_api();
    auto out = split_batch_response(s, "users", R"([{"id":7,"name":"Seven"}])", {"7"});
    EXPECT_EQ(out.items.at("7").status, 200);
    EXPECT_EQ(json::parse(out.items.at("7").body)["name"], "Seven");
}

TEST(SplitA, MissingStatusIsConfigurable) {
    auto s = users_api();
    s.response.missing_status = 410;
    auto out = split_batch_response(s, "users", "[]", {"1"});
    EXPECT_EQ(out.items.at("1").status, 410);
    EXPECT_EQ(error_json(out.items.at("1"))["error"], "not_found");
}

TEST(SplitA, ItemsWithWrongKeyTypeAreIgnored) {
    auto s = users_api();
    auto out = split_batch_response(
        s, "users", R"([{"id":1.5},{"id":true},{"id":null},{"name":"no id"},"7",{"id":{"v":"7"}},{"id":"7"}])",
        {"7"});
    ASSERT_TRUE(out.error.empty());
    EXPECT_EQ(out.ignored_items, 6u);
    EXPECT_EQ(out.items.at("7").status, 200);
    EXPECT_EQ(out.items.at("7").body, R"({"id":"7"})");
}

TEST(SplitA, DuplicateKeysDifferentContentIs502IdenticalIsFine) {
    auto s = users_api();
    auto out = split_batch_response(
        s, "users",
        R"([{"id":"7","name":"a"},{"id":"1","name":"one"},{"id":"7","name":"b"},{"id":"1","name":"one"}])",
        {"1", "7"});
    ASSERT_TRUE(out.error.empty());
    EXPECT_EQ(out.items.at("7").status, 502);
    auto e = error_json(out.items.at("7"));
    EXPECT_EQ(e["message"], "upstream returned key \"7\" more than once");
    EXPECT_EQ(e["route"], "users");
    EXPECT_EQ(out.items.at("1").status, 200);
    EXPECT_EQ(json::parse(out.items.at("1").body)["name"], "one");
}

TEST(SplitA, MalformedJsonFailsTheWholeBatch) {
    auto s = users_api();
    for (const char* body : {"", "[{\"id\":\"1\"", "<html>502 Bad Gateway</html>", "[1,]"}) {
        auto out = split_batch_response(s, "users", body, {"1"});
        EXPECT_EQ(out.error, "upstream batch answer is not valid JSON") << body;
        EXPECT_TRUE(out.items.empty());
    }
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
    EXPECT_TRUE(json::accept(out.items.at("\xff").body));
}

// ---------------------------------------------------------------- split: B

TEST(SplitB, ReferenceResponse) {
    auto s = activities_api();
    auto out = split_batch_response(s, "activities", b_response, {"a1", "a2"});
    ASSERT_TRUE(out.error.empty()) << out.error;
    EXPECT_EQ(out.ignored_items, 0u);

    EXPECT_EQ(out.items.at("a1").status, 200);
    EXPECT_EQ(out.items.at("a1").body, R"({"id":"a1","name":"x"})");

    EXPECT_EQ(out.items.at("a2").status, 404);
    EXPECT_EQ(error_json(out.items.at("a2")),
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
    EXPECT_EQ(out.items.at("a1").status, 500);
    EXPECT_EQ(error_json(out.items.at("a1"))["message"], "upstream reported status 500 for this item");
    EXPECT_EQ(out.items.at("a2").status, 201);
    EXPECT_EQ(out.items.at("a2").body, R"({"ok":1})");
    EXPECT_EQ(out.items.at("a3").status, 202);
    EXPECT_EQ(out.items.at("a4").status, 500);  // status_code out of range: fall back to status
    EXPECT_EQ(error_json(out.items.at("a4"))["message"], "boom");
}

TEST(SplitB, UnknownStatusStringIs502) {
    auto s = activities_api();
    auto out = split_batch_response(
        s, "activities", R"({"results":[{"id":"a1","status":"pending","data":{"id":"a1"}}]})", {"a1"});
    ASSERT_TRUE(out.error.empty());
    EXPECT_EQ(out.items.at("a1").status, 502);
    auto e = error_json(out.items.at("a1"));
    EXPECT_EQ(e["error"], "upstream_item_error");
    EXPECT_NE(e["message"].get<std::string>().find("pending"), std::string::npos);
}

TEST(SplitB, SuccessWithoutDataIs502) {
    auto s = activities_api();
    auto out =
        split_batch_response(s, "activities", R"({"results":[{"id":"a1","status":"success"}]})", {"a1"});
    EXPECT_EQ(out.items.at("a1").status, 502);
    EXPECT_EQ(error_json(out.items.at("a1"))["message"], "upstream item has no /data");
}

TEST(SplitB, NoStatusPointersMeans200) {
    auto s = activities_api();
    s.response.lists[0].status_code.clear();
    s.response.lists[0].status_field.clear();
    auto out = split_batch_response(
        s, "activities", R"({"results":[{"id":"a1","status_code":404,"data":{"id":"a1"}}]})", {"a1"});
    EXPECT_EQ(out.items.at("a1").status, 200);
    EXPECT_EQ(out.items.at("a1").body, R"({"id":"a1"})");
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
    EXPECT_EQ(json::parse(out.items.at("1").body)["name"], "one");
    EXPECT_EQ(json::parse(out.items.at("2").body)["name"], "two");
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
    EXPECT_EQ(out.items.at("e-1").status, 200);
    EXPECT_EQ(out.items.at("e-1").body, R"("e-1")");
    EXPECT_EQ(out.items.at("e-0").status, 404);
}

}  // namespace
}  // namespace batchgate::coalescer
