#include "text/json_pointer.hpp"

#include <cstddef>
#include <cstdint>

#include "text/json_text.hpp"

namespace batchgate::routes {

std::optional<json_pointer> json_pointer::parse(std::string_view text) {
    json_pointer p;
    p.text_ = std::string(text);
    if (text.empty()) return p;
    if (text.front() != '/') return std::nullopt;

    std::string token;
    for (std::size_t i = 1; i <= text.size(); ++i) {
        if (i == text.size() || text[i] == '/') {
            p.tokens_.push_back(std::move(token));
            token.clear();
            continue;
        }
        char c = text[i];
        if (c == '~') {
            if (i + 1 >= text.size()) return std::nullopt;
            char e = text[++i];
            if (e == '0') token.push_back('~');
            else if (e == '1') token.push_back('/');
            else return std::nullopt;
        } else {
            token.push_back(c);
        }
    }
    return p;
}

namespace {

// RFC 6901 array index: "0" or a decimal without leading zeros; "-" (past the end) never matches.
std::optional<std::size_t> array_index(const std::string& token, std::size_t size = SIZE_MAX) {
    if (token.empty() || token.size() > 19) return std::nullopt;
    if (token.size() > 1 && token.front() == '0') return std::nullopt;
    std::size_t value = 0;
    for (char c : token) {
        if (c < '0' || c > '9') return std::nullopt;
        value = value * 10 + static_cast<std::size_t>(c - '0');
    }
    if (value >= size) return std::nullopt;
    return value;
}

}  // namespace

const nlohmann::json* json_pointer::find(const nlohmann::json& doc) const {
    const nlohmann::json* cur = &doc;
    for (const auto& token : tokens_) {
        if (cur->is_object()) {
            auto it = cur->find(token);
            if (it == cur->end()) return nullptr;
            cur = &*it;
        } else if (cur->is_array()) {
            auto index = array_index(token, cur->size());
            if (!index) return nullptr;
            cur = &(*cur)[*index];
        } else {
            return nullptr;
        }
    }
    return cur;
}

std::optional<std::string_view> json_pointer::find_text(std::string_view json) const {
    auto value = json_value_text(json);
    if (!value) return std::nullopt;
    return find_in_value(*value);
}

std::optional<std::string_view> json_pointer::find_in_value(std::string_view value_text, bool names_unique) const {
    std::optional<std::string_view> cur = value_text;
    for (const auto& token : tokens_) {
        if (!cur) return std::nullopt;
        if (cur->starts_with('{')) {
            cur = json_member(*cur, token, names_unique);
        } else if (cur->starts_with('[')) {
            auto index = array_index(token);
            if (!index) return std::nullopt;
            cur = json_element(*cur, *index);
        } else {
            return std::nullopt;
        }
    }
    return cur;
}

namespace {
// Each value the tokens from `at` on reach from cur; true when every copy reaches one. The copies
// at each step are separate stretches of the text: the work is linear in it.
bool each_at(const std::vector<std::string>& tokens, std::size_t at, std::string_view cur,
             const std::function<void(std::string_view)>& f) {
    if (at == tokens.size()) {
        f(cur);
        return true;
    }
    if (cur.starts_with('{')) {
        const auto copies = json_members(cur, tokens[at]);
        bool every = !copies.empty();
        for (auto v : copies) every = each_at(tokens, at + 1, v, f) && every;
        return every;
    }
    if (cur.starts_with('['))
        if (auto index = array_index(tokens[at]))
            if (auto e = json_element(cur, *index)) return each_at(tokens, at + 1, *e, f);
    return false;
}
}  // namespace

bool json_pointer::each_in_value(std::string_view value_text, const std::function<void(std::string_view)>& f) const {
    return each_at(tokens_, 0, value_text, f);
}

}  // namespace batchgate::routes
