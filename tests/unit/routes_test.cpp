// Route matching, URL helpers and JSON pointers: what decides which route a caller hits and
// which values the batch call is built from.
#include <gtest/gtest.h>

#include <stdexcept>

#include "routes/route_table.hpp"
#include "text/http_date.hpp"
#include "text/json_pointer.hpp"
#include "text/json_text.hpp"
#include "text/url.hpp"

namespace batchgate::routes {
namespace {

using config::gateway_config;
using config::route_settings;

route_settings path_route(std::string name, std::string path, std::vector<std::string> methods = {}) {
    route_settings r;
    r.name = std::move(name);
    r.matches.push_back({std::move(methods), std::move(path), {}});
    return r;
}

route_settings prefix_route(std::string name, std::string prefix,
                            std::vector<std::string> methods = {}) {
    route_settings r;
    r.name = std::move(name);
    r.matches.push_back({std::move(methods), {}, std::move(prefix)});
    return r;
}

// ---------------------------------------------------------------- path_template

TEST(PathTemplate, MatchesSingleParamAndDecodesIt) {
    path_template t("/users/{id}");
    param_list params;
    ASSERT_TRUE(t.match("/users/7", params));
    ASSERT_EQ(params.size(), 1u);
    EXPECT_EQ(params[0], (std::pair<std::string, std::string>{"id", "7"}));

    ASSERT_TRUE(t.match("/users/a%20b%2Fc", params));
    EXPECT_EQ(params[0].second, "a b/c");  // %2F stays inside the one segment
    ASSERT_TRUE(t.match("/users/a+b", params));
    EXPECT_EQ(params[0].second, "a+b");  // '+' is only a space in query strings
}

TEST(PathTemplate, MatchesSeveralParamsInOrder) {
    path_template t("/api/characters/{character_id}/abilities/{ability_id}");
    EXPECT_EQ(t.param_names(), (std::vector<std::string>{"character_id", "ability_id"}));
    param_list params;
    ASSERT_TRUE(t.match("/api/characters/3/abilities/4", params));
    EXPECT_EQ(params, (param_list{{"character_id", "3"}, {"ability_id", "4"}}));
}

TEST(PathTemplate, RejectsExtraMissingOrEmptySegments) {
    path_template t("/users/{id}");
    param_list params;
    EXPECT_FALSE(t.match("/users", params));
    EXPECT_FALSE(t.match("/users/", params));  // a param needs a non-empty segment
    EXPECT_FALSE(t.match("/users/7/friends", params));
    EXPECT_FALSE(t.match("/users/7/", params));  // trailing slash is significant
    EXPECT_FALSE(t.match("/people/7", params));
    EXPECT_FALSE(t.match("users/7", params));
    EXPECT_FALSE(t.match("", params));
    EXPECT_TRUE(params.empty());  // a failed match leaves no half-filled params
}

TEST(PathTemplate, TrailingSlashInTemplateIsSignificant) {
    path_template t("/users/");
    param_list params;
    EXPECT_TRUE(t.match("/users/", params));
    EXPECT_FALSE(t.match("/users", params));

    path_template root("/");
    EXPECT_TRUE(root.match("/", params));
    EXPECT_FALSE(root.match("/x", params));
}

TEST(PathTemplate, LiteralsCompareExactly) {
    path_template t("/api/v1/activities/{id}");
    param_list params;
    EXPECT_FALSE(t.match("/API/v1/activities/a1", params));
    EXPECT_FALSE(t.match("/api//v1/activities/a1", params));
    EXPECT_TRUE(t.match("/api/v1/activities/a1", params));
}

TEST(PathTemplate, RejectsMalformedTemplates) {
    for (const char* bad : {"/users/{", "/users/{}", "/users/}", "/a/{id}/b/{id}", "/users/x{id}",
                            "/users/{id}x", "/users/{a}{b}", "/users/{i d}", "users/{id}", ""}) {
        EXPECT_THROW(path_template{bad}, std::invalid_argument) << bad;
    }
}

// ---------------------------------------------------------------- route_table

TEST(RouteTable, FirstMatchWinsInConfigOrder) {
    gateway_config cfg;
    cfg.routes.push_back(path_route("me", "/users/me"));
    cfg.routes.push_back(path_route("user", "/users/{id}"));
    cfg.routes.push_back(prefix_route("fallback", "/"));
    route_table table(cfg);

    auto m = table.match("GET", "/users/me");
    ASSERT_NE(m.route, nullptr);
    EXPECT_EQ(m.route->name, "me");
    EXPECT_TRUE(m.path_params.empty());

    m = table.match("GET", "/users/7");
    ASSERT_NE(m.route, nullptr);
    EXPECT_EQ(m.route->name, "user");
    EXPECT_EQ(m.path_params, (param_list{{"id", "7"}}));

    m = table.match("GET", "/users/7/friends");
    ASSERT_NE(m.route, nullptr);
    EXPECT_EQ(m.route->name, "fallback");
    EXPECT_TRUE(m.path_params.empty());
}

TEST(RouteTable, MethodFilteringSkipsToNextRoute) {
    gateway_config cfg;
    cfg.routes.push_back(path_route("get-user", "/users/{id}", {"GET"}));
    cfg.routes.push_back(path_route("write-user", "/users/{id}", {"PUT", "PATCH"}));
    cfg.routes.push_back(path_route("any-user", "/users/{id}"));
    route_table table(cfg);

    EXPECT_EQ(table.match("GET", "/users/1").route->name, "get-user");
    EXPECT_EQ(table.match("PATCH", "/users/1").route->name, "write-user");
    EXPECT_EQ(table.match("PUT", "/users/1").route->name, "write-user");
    EXPECT_EQ(table.match("DELETE", "/users/1").route->name, "any-user");
    EXPECT_EQ(table.match("get", "/users/1").route->name, "any-user");  // methods are case-sensitive
}

TEST(RouteTable, NoMatchReturnsNull) {
    gateway_config cfg;
    cfg.routes.push_back(path_route("user", "/users/{id}", {"GET"}));
    route_table table(cfg);
    EXPECT_EQ(table.match("POST", "/users/1").route, nullptr);
    EXPECT_EQ(table.match("GET", "/orders/1").route, nullptr);
    EXPECT_EQ(route_table(gateway_config{}).match("GET", "/").route, nullptr);
}

TEST(RouteTable, PrefixIsPlainStringPrefixOnRawPath) {
    gateway_config cfg;
    cfg.routes.push_back(prefix_route("api", "/api/", {"GET"}));
    cfg.routes.push_back(prefix_route("docs", "/doc"));
    route_table table(cfg);

    EXPECT_EQ(table.match("GET", "/api/v1/x").route->name, "api");
    EXPECT_EQ(table.match("GET", "/api/").route->name, "api");
    EXPECT_EQ(table.match("GET", "/api").route, nullptr);
    EXPECT_EQ(table.match("POST", "/api/v1/x").route, nullptr);
    EXPECT_EQ(table.match("GET", "/documents").route->name, "docs");  // plain prefix, not segments
    EXPECT_EQ(table.match("GET", "/%61pi/x").route, nullptr);        // raw path, no decoding
}

TEST(RouteTable, AnyMatchEntryOfARouteMatches) {
    // E documents: a create without {doc_id} and update/delete with it, one route.
    gateway_config cfg;
    route_settings docs;
    docs.name = "documents";
    docs.matches.push_back({{"POST"}, "/api/v1/workspaces/{ws}/documents", {}});
    docs.matches.push_back({{"PUT", "DELETE"}, "/api/v1/workspaces/{ws}/documents/{doc_id}", {}});
    cfg.routes.push_back(std::move(docs));
    cfg.routes.push_back(prefix_route("fallback", "/"));
    route_table table(cfg);

    auto m = table.match("POST", "/api/v1/workspaces/w1/documents");
    ASSERT_NE(m.route, nullptr);
    EXPECT_EQ(m.route->name, "documents");
    EXPECT_EQ(m.entry, &cfg.routes[0].matches[0]);
    EXPECT_EQ(m.path_params, (param_list{{"ws", "w1"}}));

    m = table.match("DELETE", "/api/v1/workspaces/w1/documents/doc_4");
    ASSERT_NE(m.route, nullptr);
    EXPECT_EQ(m.route->name, "documents");
    EXPECT_EQ(m.entry, &cfg.routes[0].matches[1]);
    EXPECT_EQ(m.path_params, (param_list{{"ws", "w1"}, {"doc_id", "doc_4"}}));

    // The right path with a method of the other entry matches neither entry.
    m = table.match("POST", "/api/v1/workspaces/w1/documents/doc_4");
    ASSERT_NE(m.route, nullptr);
    EXPECT_EQ(m.route->name, "fallback");
    EXPECT_EQ(m.entry, &cfg.routes[1].matches[0]);
    EXPECT_TRUE(m.path_params.empty());
    m = table.match("PUT", "/api/v1/workspaces/w1/documents");
    EXPECT_EQ(m.route->name, "fallback");
}

TEST(RouteTable, FirstRouteWithAnyMatchingEntryWins) {
    gateway_config cfg;
    route_settings a;
    a.name = "a";
    a.matches.push_back({{"GET"}, "/x/{id}", {}});
    a.matches.push_back({{}, {}, "/y/"});
    cfg.routes.push_back(std::move(a));
    cfg.routes.push_back(path_route("b", "/y/{id}"));
    cfg.routes.push_back(path_route("c", "/x/{id}"));
    route_table table(cfg);
    EXPECT_EQ(table.match("GET", "/x/1").route->name, "a");
    EXPECT_EQ(table.match("POST", "/x/1").route->name, "c");  // a's /x entry is GET only
    EXPECT_EQ(table.match("POST", "/y/1").route->name, "a");  // a's later prefix entry beats b
    EXPECT_EQ(table.match("POST", "/y/1").entry, &cfg.routes[0].matches[1]);
}

TEST(RouteTable, RouteWithoutEntriesNeverMatches) {
    gateway_config cfg;
    route_settings empty;
    empty.name = "empty";
    cfg.routes.push_back(std::move(empty));
    cfg.routes.push_back(prefix_route("all", "/"));
    route_table table(cfg);
    EXPECT_EQ(table.match("GET", "/").route->name, "all");
}

TEST(RouteTable, MalformedTemplateFailsAtBuild) {
    gateway_config cfg;
    cfg.routes.push_back(path_route("bad", "/users/{id"));
    EXPECT_THROW(route_table{cfg}, std::invalid_argument);
}

// ---------------------------------------------------------------- URL helpers

TEST(UrlDecode, DecodesEscapesAndKeepsBadOnesVerbatim) {
    EXPECT_EQ(url_decode("a%20b%2fc", false), "a b/c");
    EXPECT_EQ(url_decode("a+b", false), "a+b");
    EXPECT_EQ(url_decode("a+b", true), "a b");
    EXPECT_EQ(url_decode("%2B", true), "+");  // an encoded plus stays a plus
    EXPECT_EQ(url_decode("100%", false), "100%");
    EXPECT_EQ(url_decode("%4", false), "%4");
    EXPECT_EQ(url_decode("%zz%4g", false), "%zz%4g");
    EXPECT_EQ(url_decode("%C3%A9", false), "\xC3\xA9");
    EXPECT_EQ(url_decode("%00x", false), std::string("\0x", 2));
}

TEST(UrlEncode, EncodesAllButUnreserved) {
    EXPECT_EQ(url_encode("AZaz09-._~"), "AZaz09-._~");
    EXPECT_EQ(url_encode("a b,c/d?e&f=g+h%"), "a%20b%2Cc%2Fd%3Fe%26f%3Dg%2Bh%25");
    EXPECT_EQ(url_encode("\xC3\xA9"), "%C3%A9");
    EXPECT_EQ(url_decode(url_encode("x,y&z=1 2"), true), "x,y&z=1 2");
    // Appended after what the string holds, and sized without encoding.
    std::string q = "/users?ids=";
    append_url_encoded(q, "7");
    q += ',';
    append_url_encoded(q, "a b\xC3\xA9");
    EXPECT_EQ(q, "/users?ids=7,a%20b%C3%A9");
    for (const char* t : {"", "7", "a b\xC3\xA9", "%%", "AZaz09-._~"})
        EXPECT_EQ(url_encoded_size(t), url_encode(t).size()) << t;
}

TEST(ParseQuery, KeepsOrderRepeatsAndEmptyValues) {
    EXPECT_EQ(parse_query("a=1&b=2&a=3"), (param_list{{"a", "1"}, {"b", "2"}, {"a", "3"}}));
    EXPECT_EQ(parse_query("flag&empty=&x=1"), (param_list{{"flag", ""}, {"empty", ""}, {"x", "1"}}));
    EXPECT_EQ(parse_query("&&a=1&"), (param_list{{"a", "1"}}));
    EXPECT_TRUE(parse_query("").empty());
}

TEST(ParseQuery, DecodesPlusAndEscapesAndKeepsBadEscapes) {
    EXPECT_EQ(parse_query("q=hello+world&fields=id%2Cname"),
              (param_list{{"q", "hello world"}, {"fields", "id,name"}}));
    EXPECT_EQ(parse_query("a%5B%5D=1"), (param_list{{"a[]", "1"}}));
    EXPECT_EQ(parse_query("bad=%G1%"), (param_list{{"bad", "%G1%"}}));
    EXPECT_EQ(parse_query("eq=a=b"), (param_list{{"eq", "a=b"}}));  // split on the first '='
}

TEST(SplitTarget, SplitsOnFirstQuestionMark) {
    EXPECT_EQ(split_target("/users/7?fields=a"),
              (std::pair<std::string_view, std::string_view>{"/users/7", "fields=a"}));
    EXPECT_EQ(split_target("/users/7"), (std::pair<std::string_view, std::string_view>{"/users/7", ""}));
    EXPECT_EQ(split_target("/a?b?c"), (std::pair<std::string_view, std::string_view>{"/a", "b?c"}));
    EXPECT_EQ(split_target("/a?"), (std::pair<std::string_view, std::string_view>{"/a", ""}));
}

// ---------------------------------------------------------------- json_pointer

TEST(JsonPointer, ParsesAndWalksObjectsAndArrays) {
    auto doc = nlohmann::json::parse(R"({"results":[{"id":"a1"},{"id":"a2"}],"a/b":1,"m~n":2,"":3})");
    auto p = json_pointer::parse("/results/1/id");
    ASSERT_TRUE(p);
    EXPECT_EQ(p->text(), "/results/1/id");
    ASSERT_NE(p->find(doc), nullptr);
    EXPECT_EQ(*p->find(doc), "a2");

    EXPECT_EQ(*json_pointer::parse("/a~1b")->find(doc), 1);
    EXPECT_EQ(*json_pointer::parse("/m~0n")->find(doc), 2);
    EXPECT_EQ(*json_pointer::parse("/")->find(doc), 3);  // "" member name

    auto root = json_pointer::parse("");
    ASSERT_TRUE(root);
    EXPECT_TRUE(root->is_root());
    EXPECT_EQ(root->find(doc), &doc);
    EXPECT_TRUE(json_pointer{}.is_root());
}

TEST(JsonPointer, RejectsBadSyntax) {
    EXPECT_FALSE(json_pointer::parse("results"));
    EXPECT_FALSE(json_pointer::parse("/a~2"));
    EXPECT_FALSE(json_pointer::parse("/a~"));
    EXPECT_FALSE(json_pointer::parse("#/a"));
}

TEST(JsonPointer, MissingStepsGiveNullNeverThrow) {
    auto doc = nlohmann::json::parse(R"({"a":[10,20,30],"s":"text","n":null})");
    for (const char* text : {"/b", "/a/3", "/a/-", "/a/01", "/a/x", "/a/-1", "/a/1/x", "/s/0", "/n/x",
                             "/a/99999999999999999999999"}) {
        auto p = json_pointer::parse(text);
        ASSERT_TRUE(p) << text;
        EXPECT_EQ(p->find(doc), nullptr) << text;
    }
    EXPECT_EQ(*json_pointer::parse("/a/0")->find(doc), 10);
    EXPECT_EQ(*json_pointer::parse("/a/2")->find(doc), 30);
    ASSERT_NE(json_pointer::parse("/n")->find(doc), nullptr);  // present, but null
    EXPECT_TRUE(json_pointer::parse("/n")->find(doc)->is_null());
}

// The pointer's value as the text wrote it: the same value find() gives, in its own bytes.
TEST(JsonPointer, FindTextGivesTheValuesOwnBytes) {
    const std::string text =
        "\xEF\xBB\xBF { \"results\" : [ {\"id\": \"a1\", \"n\": 1.10} ,\n\t{\"id\":\"a2\",\"big\":123456789012345678901234} ],"
        " \"a/b\":1, \"m~n\" : [ ] , \"\":\"x\\\"]}\" , \"d\":1, \"d\":{\"k\":true} } ";
    const auto doc = nlohmann::json::parse(text);
    auto text_at = [&text](const char* pointer) { return json_pointer::parse(pointer)->find_text(text); };
    EXPECT_EQ(text_at("/results/0"), R"({"id": "a1", "n": 1.10})");
    EXPECT_EQ(text_at("/results/0/n"), "1.10");
    EXPECT_EQ(text_at("/results/1/big"), "123456789012345678901234");
    EXPECT_EQ(text_at("/a~1b"), "1");
    EXPECT_EQ(text_at("/m~0n"), "[ ]");
    EXPECT_EQ(text_at("/"), R"("x\"]}")");  // a string holding a quote and brackets
    EXPECT_EQ(text_at("/d"), R"({"k":true})");  // a repeated name: the last, as the parse keeps it
    EXPECT_EQ(text_at("/d/k"), "true");
    EXPECT_EQ(text_at("")->front(), '{');  // the whole document, without the BOM and spaces
    EXPECT_EQ(text_at("")->back(), '}');
    for (const char* missing : {"/results/2", "/results/01", "/results/-", "/a~1b/0", "/nope", "/d/k/0"}) {
        EXPECT_EQ(json_pointer::parse(missing)->find(doc), nullptr) << missing;
        EXPECT_EQ(text_at(missing), std::nullopt) << missing;
    }
    // Whatever it finds is what find() finds.
    for (const char* p : {"", "/results", "/results/0", "/results/1/id", "/a~1b", "/m~0n", "/", "/d", "/d/k"})
        EXPECT_EQ(nlohmann::json::parse(*text_at(p)), *json_pointer::parse(p)->find(doc)) << p;
}

TEST(JsonPointer, FindTextComparesEscapedNamesUnescaped) {
    const std::string text = R"({"\u0069d":7,"a\"b":8,"\u00e9":9})";
    EXPECT_EQ(json_pointer::parse("/id")->find_text(text), "7");
    EXPECT_EQ(json_pointer::parse("/a\"b")->find_text(text), "8");
    EXPECT_EQ(json_pointer::parse("/\xC3\xA9")->find_text(text), "9");
}

TEST(JsonText, ValueTextEndsWhereTheValueDoes) {
    // nlohmann takes a NUL after the value for the end of its input.
    EXPECT_EQ(json_value_text(std::string_view("[1]\0 ,{\"x\"", 10)), "[1]");
    EXPECT_EQ(json_value_text(" \"a b\" "), R"("a b")");
    EXPECT_EQ(json_value_text("   "), std::nullopt);
    EXPECT_EQ(json_member(R"({"a":})", "a"), std::nullopt);  // not JSON: nothing, not ""
}

// A repeated name's last member is the parse's; names_unique (check_json found no name repeated)
// stops at the first, and finds the same as the whole scan where that holds.
TEST(JsonText, AMemberIsTheLastOfItsNameUnlessNamesAreUnique) {
    const std::string repeated = R"({"id":1,"x":{"id":3},"\u0069d":2})";
    bool repeats = false;
    ASSERT_EQ(check_json(repeated, 64, &repeats), json_status::ok);
    EXPECT_TRUE(repeats);
    EXPECT_EQ(json_member(repeated, "id"), "2");
    EXPECT_EQ(json_pointer::parse("/id")->find_in_value(repeated), "2");
    EXPECT_EQ(json_member(repeated, "id", true), "1");  // told wrongly: the first, as asked
    const std::string unique = R"({"id":1,"x":{"id":3},"y":2})";
    ASSERT_EQ(check_json(unique, 64, &repeats), json_status::ok);
    EXPECT_FALSE(repeats);
    for (const char* name : {"id", "x", "y", "z"})
        EXPECT_EQ(json_member(unique, name, true), json_member(unique, name)) << name;
    EXPECT_EQ(json_pointer::parse("/x/id")->find_in_value(unique, true), "3");
}

// Every copy of a repeated name, in order, and every value a pointer reaches through them.
TEST(JsonText, EveryCopyOfARepeatedNameIsFound) {
    const std::string item = R"({"id":1,"d":{"id":"a"},"\u0069d":2,"d":[{"id":"b"}],"id":3,"d":{"x":0}})";
    using views = std::vector<std::string_view>;
    EXPECT_EQ(json_members(item, "id"), (views{"1", "2", "3"}));
    EXPECT_EQ(json_members(item, "z"), views{});
    EXPECT_EQ(json_members("[1]", "id"), views{});
    auto every = [](const char* pointer, std::string_view text) {
        views found;
        const bool all =
            json_pointer::parse(pointer)->each_in_value(text, [&](std::string_view v) { found.push_back(v); });
        return std::pair{found, all};
    };
    EXPECT_EQ(every("/id", item), std::pair(views{"1", "2", "3"}, true));
    // The second "d" (an array) has no "id", the third none either: not every copy reaches one.
    EXPECT_EQ(every("/d/id", item), std::pair(views{"\"a\""}, false));
    EXPECT_EQ(every("/d/0/id", item), std::pair(views{"\"b\""}, false));
    EXPECT_EQ(every("", item), std::pair(views{item}, true));
    EXPECT_EQ(every("/z", item), std::pair(views{}, false));
    EXPECT_EQ(every("/id/x", item), std::pair(views{}, false));  // scalars have no members
    // Without a repeated name: one value, find_in_value's.
    EXPECT_EQ(every("/x/id", R"({"x":{"id":3}})"), std::pair(views{"3"}, true));
    EXPECT_EQ(every("/x/1", R"({"x":[0,5]})"), std::pair(views{"5"}, true));
    EXPECT_EQ(every("/x/2", R"({"x":[0,5]})"), std::pair(views{}, false));
}

TEST(JsonText, MemberCountCountsColonsOutsideStrings) {
    EXPECT_EQ(json_member_count(R"([1,"a:b",{"x":{"y":[{"z":"::"}]}}])"), 3u);
    EXPECT_EQ(json_member_count(R"({"a\":":1,"a\":":2})"), 2u);
    EXPECT_EQ(json_member_count("7"), 0u);
}

TEST(JsonText, ArrayElementsAreTheirOwnBytes) {
    EXPECT_EQ(json_array_elements("[]"), std::vector<std::string_view>{});
    EXPECT_EQ(json_array_elements("[ ]"), std::vector<std::string_view>{});
    EXPECT_EQ(json_array_elements(R"([1,-2.5e3 , "a,]" ,{"x":[1,{}]},[],null,true])"),
              (std::vector<std::string_view>{"1", "-2.5e3", R"("a,]")", R"({"x":[1,{}]})", "[]", "null", "true"}));
    EXPECT_EQ(json_array_elements(R"({"a":1})"), std::nullopt);
    EXPECT_EQ(json_array_elements("7"), std::nullopt);
    // Not valid JSON: nothing is read past the end.
    for (const char* bad : {"[", "[1,", "[\"abc", "[{\"a\":[1}", "[1 2]"}) EXPECT_EQ(json_array_elements(bad), std::nullopt) << bad;
}

// ------------------------------------------------------------------ bounded JSON parsing

TEST(JsonText, DepthCountsArraysAndObjectsNotStrings) {
    EXPECT_FALSE(json_too_deep("1", 0));
    EXPECT_TRUE(json_too_deep("[]", 0));
    EXPECT_FALSE(json_too_deep("[]", 1));
    EXPECT_FALSE(json_too_deep(R"({"a":[1,{"b":2}],"c":[]})", 3));
    EXPECT_TRUE(json_too_deep(R"({"a":[1,{"b":[2]}]})", 3));
    // Brackets and escaped quotes inside strings are text.
    EXPECT_FALSE(json_too_deep(R"(["[[[[", "\"[[[", "\\", "{"])", 1));
    EXPECT_TRUE(json_too_deep(R"(["\\",[[]]])", 2));
    // Siblings do not add up.
    EXPECT_FALSE(json_too_deep("[[],[],[[]],[]]", 3));
}

TEST(JsonText, ParseRefusesDeepDocumentsWithoutBuildingThem) {
    const std::string deep = std::string(100000, '[') + std::string(100000, ']');
    auto p = parse_json(deep);
    EXPECT_EQ(p.status, json_status::too_deep);
    EXPECT_TRUE(p.value.is_discarded());
    EXPECT_EQ(parse_json("[[1]]", 2).status, json_status::ok);
    EXPECT_EQ(parse_json("[[1]]", 2).value, nlohmann::json::parse("[[1]]"));
    EXPECT_EQ(parse_json("{not json").status, json_status::invalid);
    EXPECT_EQ(parse_json("", 8).status, json_status::invalid);
    EXPECT_EQ(parse_json("[1E400]").status, json_status::out_of_range);
    // nlohmann alone takes a NUL for the end of its input; JSON has no raw NUL anywhere.
    using namespace std::string_view_literals;
    EXPECT_EQ(parse_json("[1]\0junk{{"sv).status, json_status::invalid);
    EXPECT_EQ(parse_json("[\"a\0b\"]"sv).status, json_status::invalid);
    EXPECT_EQ(parse_json("\0"sv).status, json_status::invalid);
    EXPECT_EQ(parse_json("[,1E400]").status, json_status::invalid);  // the first fault decides
    EXPECT_EQ(parse_json("[1e-400, 18446744073709551616]").status, json_status::ok);
    // At the cap a document still copies and dumps.
    const std::string at_cap = std::string(max_json_depth_cap, '[') + std::string(max_json_depth_cap, ']');
    auto q = parse_json(at_cap);
    ASSERT_TRUE(q.ok());
    nlohmann::json copy = q.value;
    EXPECT_EQ(copy.dump(), at_cap);
    EXPECT_EQ(json_depth_message(64), "JSON nested deeper than limits.max_json_depth (64)");
}

// check_json stands in for parse_json on an upstream's batch answer: the same status for every
// text (tests/fuzz/fuzz_json_text.cpp compares the two on random input).
TEST(JsonText, CheckGivesTheParsesStatusWithoutBuilding) {
    using namespace std::string_view_literals;
    const std::vector<std::pair<std::string_view, std::size_t>> texts = {
        {"[1]", 512}, {" {\"a\" : [true, false, null, -0, 1.5e-3, \"x\"]} ", 512}, {"\xEF\xBB\xBF[]", 512},
        {"\xEF\xBB[]", 512}, {" \xEF\xBB\xBF[]", 512}, {"", 512}, {" ", 512}, {"[1,]", 512}, {"{\"a\":1,}", 512},
        {"[01]", 512}, {"[-]", 512}, {"[1.]", 512}, {"[1e]", 512}, {"[.5]", 512}, {"[+1]", 512}, {"[tru]", 512},
        {"[1E400]", 512}, {"[,1E400]", 512}, {"[1E400,]", 512}, {"[1e-400, 18446744073709551616]", 512},
        {"[1]\0junk{{"sv, 512}, {"[\"a\0b\"]"sv, 512}, {"[[[1]]]", 2}, {"[[[1", 2}, {"[[1]]", 2}, {"[x, [[[", 2},
        {"\"\\ud83d\\ude00\"", 512}, {"\"\\ud83d\"", 512}, {"\"\\ude00\"", 512}, {"\"\\ud83d\\u0041\"", 512},
        {"\"\\u00e9\\/\\b\\f\\n\\r\\t\\\\\\\"\"", 512}, {"\"\\x\"", 512}, {"\"\\u12\"", 512}, {"\"\t\"", 512},
        {"\"\xC3\xA9\"", 512}, {"\"\xC3\x28\"", 512}, {"\"\xE0\x80\xAF\"", 512}, {"\"\xED\xA0\x80\"", 512},
        {"\"\xF4\x90\x80\x80\"", 512}, {"\"\xF0\x9F\x98\x80\"", 512}, {"\"\xC3\"", 512}, {"[\xC3\xA9]", 512},
        {"{\"a\":1 \"b\":2}", 512}, {"{\"a\" 1}", 512}, {"{1:2}", 512}, {"[1}", 512}, {"{\"a\":1]", 512},
        {"1 2", 512}, {"\"abc", 512}, {"[\"\\", 512},
    };
    for (const auto& [text, depth] : texts)
        EXPECT_EQ(check_json(text, depth), parse_json(text, depth).status) << text;
    EXPECT_EQ(check_json("[1E400]"), json_status::out_of_range);
    EXPECT_EQ(check_json("[" + std::string(309, '9') + "]"), json_status::out_of_range);
    EXPECT_EQ(check_json("[" + std::string(308, '9') + ".5]"), json_status::ok);
    const std::string deep = std::string(100000, '[') + std::string(100000, ']');
    EXPECT_EQ(check_json(deep), json_status::too_deep);
}

TEST(JsonText, RepeatedNamesAreFoundPerObjectAndUnescaped) {
    EXPECT_FALSE(json_repeats_a_name(R"({"a":1,"b":{"a":2},"c":[{"a":3},{"a":4}]})"));
    EXPECT_TRUE(json_repeats_a_name(R"({"a":1,"b":2,"a":3})"));
    EXPECT_TRUE(json_repeats_a_name(R"([1,{"x":{"y":1,"y":2}}])"));
    EXPECT_TRUE(json_repeats_a_name(R"({"a":1,"\u0061":2})"));
    EXPECT_FALSE(json_repeats_a_name(R"({"a":"b","b":"a","c":["a","a"]})"));  // values are no names
    std::string many = "{";
    for (int i = 0; i < 40; ++i) many += "\"k" + std::to_string(i) + "\":" + std::to_string(i) + ",";
    EXPECT_FALSE(json_repeats_a_name(many + "\"z\":0}"));
    EXPECT_TRUE(json_repeats_a_name(many + "\"k7\":0}"));
    // The check of a whole answer says the same of it, in its one pass.
    for (const std::string& text : {std::string(R"([{"a":1,"b":{"a":2}},{"a":3}])"), std::string(R"([{"a":1,"a":2}])"),
                                    std::string(R"({"x":[{"y":1,"\u0079":2}]})"), many + "\"z\":0}",
                                    many + "\"k7\":0}"}) {
        bool repeated = false;
        ASSERT_EQ(check_json(text, 64, &repeated), json_status::ok) << text;
        EXPECT_EQ(repeated, json_repeats_a_name(text)) << text;
    }
}

TEST(JsonText, StringsAndIntegersReadFromTheirText) {
    EXPECT_EQ(json_string_value(R"("abc")"), "abc");
    EXPECT_EQ(json_string_value(R"("a\u0062\n")"), "ab\n");
    EXPECT_EQ(json_string_value("7"), std::nullopt);
    EXPECT_TRUE(json_integer_literal("-0"));
    EXPECT_TRUE(json_integer_literal("18446744073709551616"));
    EXPECT_FALSE(json_integer_literal("1.0"));
    EXPECT_FALSE(json_integer_literal("1e3"));
    EXPECT_FALSE(json_integer_literal("\"7\""));
    EXPECT_FALSE(json_integer_literal("-"));
}

// --- HTTP-date (RFC 9110 section 5.6.7) ----------------------------------------------------

std::chrono::sys_seconds at(int y, unsigned m, unsigned d, int hh, int mm, int ss) {
    using namespace std::chrono;
    return sys_days(year(y) / month(m) / day(d)) + hours(hh) + minutes(mm) + seconds(ss);
}

TEST(HttpDate, TheThreeFormsOfRfc9110NameTheSameInstant) {
    const auto now = at(2026, 12, 6, 0, 0, 0);
    const auto expected = at(1994, 11, 6, 8, 49, 37);
    EXPECT_EQ(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT", now), expected);
    EXPECT_EQ(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT", now), expected);
    EXPECT_EQ(parse_http_date("Sun Nov  6 08:49:37 1994", now), expected);
    EXPECT_EQ(parse_http_date("Thu Dec 10 23:59:60 2026", now), at(2026, 12, 10, 23, 59, 59)) << "leap second";
    EXPECT_EQ(parse_http_date("Mon, 29 Feb 2028 00:00:00 GMT", now), at(2028, 2, 29, 0, 0, 0));
}

TEST(HttpDate, ATwoDigitYearMoreThanFiftyYearsAheadIsThePastCentury) {
    const auto now = at(2026, 12, 6, 0, 0, 0);
    EXPECT_EQ(parse_http_date("Friday, 01-Jan-76 00:00:00 GMT", now), at(2076, 1, 1, 0, 0, 0));
    EXPECT_EQ(parse_http_date("Friday, 01-Jan-77 00:00:00 GMT", now), at(1977, 1, 1, 0, 0, 0));
    EXPECT_EQ(parse_http_date("Friday, 01-Jan-26 00:00:00 GMT", now), at(2026, 1, 1, 0, 0, 0));
    EXPECT_EQ(parse_http_date("Friday, 01-Jan-26 00:00:00 GMT", at(2090, 1, 1, 0, 0, 0)), at(2126, 1, 1, 0, 0, 0));
}

TEST(HttpDate, AnythingButTheGrammarIsRefused) {
    const auto now = at(2026, 12, 6, 0, 0, 0);
    for (const char* bad : {"", "120", "-1", "Sun, 6 Nov 1994 08:49:37 GMT", "sun, 06 Nov 1994 08:49:37 GMT",
                            "Sun, 06 nov 1994 08:49:37 GMT", "Sun, 06 Nov 1994 08:49:37 UTC", "Sun, 06 Nov 1994 08:49:37",
                            "Sun, 06 Nov 1994 08:49:37 GMT ", " Sun, 06 Nov 1994 08:49:37 GMT", "Sun,  06 Nov 1994 08:49:37 GMT",
                            "Sun, 31 Apr 1994 08:49:37 GMT", "Sun, 29 Feb 1900 08:49:37 GMT", "Sun, 00 Nov 1994 08:49:37 GMT",
                            "Sun, 06 Nov 1994 24:00:00 GMT", "Sun, 06 Nov 1994 08:60:00 GMT", "Sun, 06 Nov 1994 08:49:61 GMT",
                            "Sun, 06 Nov 94 08:49:37 GMT", "Sunday, 06-Nov-1994 08:49:37 GMT", "Sun, 06-Nov-94 08:49:37 GMT",
                            "Sun Nov 06 08:49:37 1994", "Sun Nov 6 08:49:37 1994", "Sun Nov  6 08:49:37 1994 GMT",
                            "Sun, 06 Nov 1994 8:49:37 GMT", "Sun, 06 Nov +994 08:49:37 GMT", "Sun, 06 Nov 1994 08:49:37 GMT\n"})
        EXPECT_FALSE(parse_http_date(bad, now)) << bad;
}

TEST(HttpDate, FormattedDatesReadBack) {
    const auto now = at(2026, 12, 6, 0, 0, 0);
    EXPECT_EQ(format_http_date(at(1994, 11, 6, 8, 49, 37)), "Sun, 06 Nov 1994 08:49:37 GMT");
    for (auto t : {at(1970, 1, 1, 0, 0, 0), at(2000, 2, 29, 23, 59, 59), at(2026, 12, 6, 10, 30, 5), at(9999, 12, 31, 0, 0, 0)})
        EXPECT_EQ(parse_http_date(format_http_date(t), now), t) << format_http_date(t);
}

}  // namespace
}  // namespace batchgate::routes
