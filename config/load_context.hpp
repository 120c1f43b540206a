// What every section loader shares (loader.cpp and load_*.cpp): the error list (context), one
// mapping checked against its known keys (map_reader), the typed scalar readers, YAML -> JSON
// and the placeholder scan. Internal to the config loader; config/loader.hpp is the interface.
#pragma once

#include <charconv>
#include <cstddef>
#include <initializer_list>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include "config/config.hpp"

namespace batchgate::config::detail {

// ---------------------------------------------------------------------------------------
// Small text helpers (load_context.cpp)

bool is_name_char(char c);
bool is_valid_name(std::string_view s);
bool is_token(std::string_view s);
std::string to_upper(std::string s);
std::string to_lower(std::string s);
std::string quote(std::string_view s);
std::size_t edit_distance(std::string_view a, std::string_view b);
bool is_valid_json_pointer(std::string_view p);

template <typename Int>
bool parse_uint(std::string_view s, Int& out) {
    if (s.empty() || s.front() < '0' || s.front() > '9') return false;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
    return ec == std::errc{} && p == s.data() + s.size();
}

// ---------------------------------------------------------------------------------------
// Error collection

struct located_error {
    int line;
    int col;
    std::string text;
};

struct context {
    std::string file;
    std::vector<located_error> errors;

    void add(const YAML::Mark& mark, const std::string& path, const std::string& msg) {
        int line = mark.is_null() ? 1 : mark.line + 1;
        int col = mark.is_null() ? 1 : mark.column + 1;
        std::string text = file + ":" + std::to_string(line) + ":" + std::to_string(col) + ": ";
        if (!path.empty()) text += path + ": ";
        text += msg;
        errors.push_back({line, col, std::move(text)});
    }
};

std::string child(const std::string& path, std::string_view key);
std::string index(const std::string& path, std::size_t i);
const char* kind(const YAML::Node& n);

// A present key: its value and the best place to point at (a null value has no useful mark).
struct field {
    YAML::Node key;
    YAML::Node value;
    std::string path;
    YAML::Mark mark() const { return value.IsNull() || value.Mark().is_null() ? key.Mark() : value.Mark(); }
};

// One YAML mapping checked against its known keys: unknown and duplicate keys are reported
// on construction; lookups never modify the tree (non-const operator[] would).
class map_reader {
public:
    map_reader(context& ctx, const YAML::Node& node, std::string path,
               std::initializer_list<std::string_view> known)
        : ctx_(ctx), node_(node), path_(std::move(path)) {
        if (!node.IsMap()) {
            ok_ = false;
            ctx_.add(node.Mark(), path_, std::string("expected a map, got ") + kind(node));
            return;
        }
        for (auto it = node.begin(); it != node.end(); ++it) {
            const YAML::Node k = it->first;  // a copy: it-> returns a temporary proxy
            if (!k.IsScalar()) {
                ctx_.add(k.Mark(), path_, std::string("map keys must be plain strings, got ") + kind(k));
                continue;
            }
            const std::string& name = k.Scalar();
            if (std::find(known.begin(), known.end(), name) == known.end()) {
                std::string msg = "unknown key " + quote(name);
                std::size_t best = 3;
                std::string_view suggestion;
                for (auto cand : known) {
                    std::size_t d = edit_distance(name, cand);
                    if (d < best) {
                        best = d;
                        suggestion = cand;
                    }
                }
                if (!suggestion.empty()) msg += " (did you mean " + quote(suggestion) + "?)";
                ctx_.add(k.Mark(), child(path_, name), msg);
                continue;
            }
            auto dup = std::find_if(fields_.begin(), fields_.end(),
                                    [&](const field& f) { return f.key.Scalar() == name; });
            if (dup != fields_.end()) {
                ctx_.add(k.Mark(), child(path_, name),
                         "duplicate key (first given at line " + std::to_string(dup->key.Mark().line + 1) + ")");
                continue;
            }
            fields_.push_back({k, it->second, child(path_, name)});
        }
    }

    bool ok() const { return ok_; }
    const std::string& path() const { return path_; }
    YAML::Mark mark() const { return node_.Mark(); }

    const field* get(std::string_view key) const {
        for (const auto& f : fields_)
            if (f.key.Scalar() == key) return &f;
        return nullptr;
    }

    const field* required(std::string_view key) const {
        const field* f = get(key);
        if (!f && ok_) ctx_.add(node_.Mark(), child(path_, key), "required key is missing");
        return f;
    }

private:
    context& ctx_;
    YAML::Node node_;
    std::string path_;
    bool ok_ = true;
    std::vector<field> fields_;
};

// ---------------------------------------------------------------------------------------
// Typed scalar readers (load_context.cpp): each reports its own error and returns nullopt on
// failure.

std::optional<std::string> read_string(context& ctx, const field& f);
std::optional<std::vector<std::pair<std::string, YAML::Mark>>> read_string_list(context& ctx, const field& f);
std::optional<bool> read_bool(context& ctx, const field& f);
std::optional<long long> read_int(context& ctx, const field& f, long long min, long long max);
std::optional<std::size_t> read_count(context& ctx, const field& f, long long min,
                                      long long max = std::numeric_limits<long long>::max());
std::optional<duration> read_duration(context& ctx, const field& f, bool allow_zero);
std::optional<std::size_t> read_size(context& ctx, const field& f, bool allow_zero);
std::optional<std::string> read_pointer(context& ctx, const field& f, bool allow_root);
std::optional<std::string> read_method(context& ctx, const std::string& text, const YAML::Mark& mark,
                                       const std::string& path);

template <typename E>
std::optional<E> read_enum(context& ctx, const field& f, std::string_view what,
                           std::initializer_list<std::pair<std::string_view, E>> values) {
    auto s = read_string(ctx, f);
    if (!s) return std::nullopt;
    std::string expected;
    std::size_t i = 0;
    for (const auto& [name, value] : values) {
        if (*s == name) return value;
        expected += (i == 0 ? "" : i + 1 == values.size() ? " or " : ", ") + std::string(name);
        ++i;
    }
    ctx.add(f.mark(), f.path, "unknown " + std::string(what) + " " + quote(*s) + " (expected " + expected + ")");
    return std::nullopt;
}

// ---------------------------------------------------------------------------------------
// YAML -> JSON for request.body, plus the placeholder checks on its strings (load_context.cpp).

struct placeholder_use {
    // "path", "query", "header", "body" (name = JSON pointer, "" = the whole body), "items", "key",
    // "method", "map" (name = map name)
    std::string source;
    std::string name;
    std::string type;    // type suffix without ':' ("" = none)
    YAML::Mark mark;
    std::string path;    // key path of the string that uses it

    std::string text() const { return "{" + source + (name.empty() ? "" : "." + name) + "}"; }
};

std::optional<std::string> scan_placeholders(std::string_view s, const YAML::Mark& mark, const std::string& path,
                                             std::vector<placeholder_use>& uses);
nlohmann::json yaml_to_json(context& ctx, const YAML::Node& n, const std::string& path,
                            std::vector<placeholder_use>& uses, const YAML::Mark& fallback, bool templates = true);

}  // namespace batchgate::config::detail
