// JSON and text templates with {placeholder} values, for fan-out requests and responses.
// Pure: every value comes from a resolver the caller supplies.
//
// A placeholder is "{name}" or "{name:type}" with type int, number, bool, string or json.
// In a JSON template, a string that is exactly one placeholder becomes the value itself (an
// object stays an object); when the value is absent the string is removed from its object or
// array. Inside longer text each placeholder becomes its text (strings as they are, other
// values as JSON; absent and null become "").
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace batchgate::fanout {

using json = nlohmann::json;

// Value of the placeholder name (type suffix removed), or nullopt when absent.
using resolver = std::function<std::optional<json>(std::string_view name)>;

struct render_result {
    std::optional<json> value;  // nullopt with an empty error: the whole template was absent
    std::string error;          // a type conversion failed
};

render_result render_json(const json& tmpl, const resolver& resolve);

struct text_result {
    std::optional<std::string> text;  // nullopt with an empty error: a lone placeholder was absent
    std::string error;
};

// Renders a text template (path, query value, header value). Values are url-encoded when
// url_encode is set (the literal text around them is kept as written).
text_result render_text(std::string_view tmpl, const resolver& resolve, bool url_encode);

// Placeholder names a template may use: exact names ("item") and prefixes ending in '.'
// ("body." allows {body./fields}).
struct placeholder_rules {
    std::vector<std::string> exact;
    std::vector<std::string> prefixes;
};

// Load-time check of a template string: an error text for unbalanced braces, unknown type
// suffixes, placeholders outside rules, or a prefix "X./" not followed by a valid JSON pointer.
std::optional<std::string> check_text(std::string_view tmpl, const placeholder_rules& rules);
// The same over every string of a JSON template; the error names the first bad string.
std::optional<std::string> check_json(const json& tmpl, const placeholder_rules& rules);

// A JSON value as text: strings as they are, null as "", anything else as JSON.
std::string text_of(const json& v);

}  // namespace batchgate::fanout
