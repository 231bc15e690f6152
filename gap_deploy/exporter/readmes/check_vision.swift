// Runs model_app.mlpackage through Vision on the frames in app_check/ and compares the probabilities with the
// FP32 ONNX's (app_check/expected.json), written by gap-pack --app. On a Mac: swift check_vision.swift
import CoreML
import Foundation
import Vision

let folder = URL(fileURLWithPath: CommandLine.arguments.count > 1 ? CommandLine.arguments[1] : ".")
let expected = try JSONSerialization.jsonObject(with: Data(contentsOf: folder.appendingPathComponent(
    "app_check/expected.json"))) as! [String: Any]
let labels = expected["labels"] as! [String]
let tolerance = expected["atol"] as! Double
let compiled = try MLModel.compileModel(at: folder.appendingPathComponent("model_app.mlpackage"))
let model = try VNCoreMLModel(for: MLModel(contentsOf: compiled))
var failed = 0
for case let frame as [String: Any] in expected["frames"] as! [Any] {
    let file = folder.appendingPathComponent("app_check").appendingPathComponent(frame["file"] as! String)
    let want = frame["probabilities"] as! [Double]
    let request = VNCoreMLRequest(model: model)
    request.imageCropAndScaleOption = .scaleFill  // the frames are the model's size already
    try VNImageRequestHandler(url: file).perform([request])
    let got = (request.results as? [VNClassificationObservation]) ?? []
    var worst = 0.0
    for observation in got {
        if let index = labels.firstIndex(of: observation.identifier) {
            worst = max(worst, abs(Double(observation.confidence) - want[index]))
        }
    }
    let top = got.first?.identifier ?? "none"
    let wantTop = labels[want.indices.max(by: { want[$0] < want[$1] })!]
    let ok = top == wantTop && worst <= tolerance
    if !ok { failed += 1 }
    print("\(frame["file"] as! String): top-1 \(top) (ONNX \(wantTop)), largest difference \(worst): \(ok ? "ok" : "FAILED")")
}
print(failed == 0 ? "PASSED" : "FAILED: \(failed) frame(s)")
exit(failed == 0 ? 0 : 1)
