import torch

from tunesmith.infer.generator import Generator, Sampling, StopFilter
from tunesmith.models.saved import load_causal_lm, save_model


def users(prompts):
    return [[{"role": "user", "content": p}] for p in prompts]


def saved_generator(folder) -> Generator:
    model, tokenizer, _ = load_causal_lm(folder)
    return Generator(model, tokenizer)


def test_merged_saved_model_generates_what_the_adapter_generated(tiny_lm, tokenizer, tmp_path):
    from peft import LoraConfig as PeftLora
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    peft = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_lm), PeftLora(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)  # a trained-looking adapter
    prompts = ["Say hi to me", "the film was good"]
    with_adapter = Generator(peft.eval(), tokenizer).replies(users(prompts), Sampling(12))
    save_model(peft.merge_and_unload(), tokenizer, {"method": "sft"}, tmp_path / "model")
    gen = saved_generator(tmp_path / "model")
    assert gen.replies(users(prompts), Sampling(12)) == with_adapter
    stop = with_adapter[0][4:7]  # a reply ends before its first stop string, which is not part of it
    assert gen.replies(users(prompts[:1]), Sampling(12, stop=(stop,))) == [with_adapter[0].split(stop)[0].strip()]
    assert gen.replies(users(prompts), Sampling(12, repetition_penalty=50.0)) != with_adapter


def test_stop_filter_holds_back_what_may_start_a_stop_string():
    f = StopFilter(Sampling(stop=("END", "##")))
    shown = [f.feed(p) for p in ["Hel", "lo E", "N", "Dmore"]]
    assert shown == ["H", "ello", " ", ""] and f.finish() == "" and "".join(shown) == "Hello "
    h = StopFilter(Sampling(stop=("END",)))
    assert [h.feed("an E"), h.finish()] == ["an", " E"]  # at the end, a held-back prefix is no stop
    g = StopFilter(Sampling())
    assert [g.feed(p) for p in ["a", "b"]] + [g.finish()] == ["a", "b", ""]


def test_streamed_pieces_join_to_the_batched_reply(tiny_lm, tokenizer):
    from transformers import AutoModelForCausalLM

    gen = Generator(AutoModelForCausalLM.from_pretrained(tiny_lm).eval(), tokenizer)
    conv = users(["the film was good"])[0]
    for sampling in (Sampling(16), Sampling(16, stop=("e",))):
        assert "".join(gen.stream(conv, sampling)).strip() == gen.replies([conv], sampling)[0]
